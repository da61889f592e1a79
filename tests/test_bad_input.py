"""Bad input, one table: each case and the exact message the user sees.

Every message is what `python train.py` prints after `error: ` (one line, exit status 2; `LITBERT_DEBUG=1` shows the
traceback instead): the cause, naming the file, line or option, and what was expected. Four cases run train.py in a
subprocess (misspelt option, wrong class_path, missing teacher directory, W&B logger without wandb); the others run
`train.run` in-process, or build the DataModule / Trainer directly and format the error as train.py does
(`cli_errors.user_error_message`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cli_errors
import train
from tests import fixtures
from tests.cli import model_data_args, quiet_run_args

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = "configs/finetune/glue.yaml"
DISTILL = "configs/distill/glue.yaml"
GLUE_TASKS = "['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2', 'stsb', 'wnli']"


@dataclass
class Env:
    """What a case needs: a private copy of the fixture data, tiny models, tokenizers, a run folder."""
    data: Path
    tmp: Path
    bert: Path
    teacher: Path
    wordpiece: Path
    bpe: Path

    def finetune(self, *extra) -> list[str]:
        return ["fit", "--config", FINETUNE, *model_data_args(self.data, self.bert), *quiet_run_args(self.tmp / "run"),
                "--data.init_args.batch_size=4", "--trainer.fast_dev_run=true", *extra]

    def distill(self, *extra) -> list[str]:
        return ["fit", "--config", DISTILL, f"--model.init_args.teacher={self.teacher}",
                f"--data.init_args.tokenizer={self.teacher}", f"--data.init_args.data_dir={self.data}",
                "--model.init_args.student_layers=[0]", *quiet_run_args(self.tmp / "run"),
                "--data.init_args.batch_size=4", "--trainer.fast_dev_run=true", *extra]

    def glue(self, task="sst2", **kwargs):
        from datamodules.glue import GLUEDataModule

        kwargs.setdefault("data_dir", str(self.data))
        return GLUEDataModule(str(self.wordpiece), task, cache_dir=str(self.tmp / "cache"), **kwargs)

    def squad(self, name: str, **kwargs):
        from datamodules.squad import SQuADDataModule

        return SQuADDataModule(str(self.wordpiece), train_file=name, eval_file=name, train_articles=None,
                               eval_articles=None, data_dir=str(self.data), cache_dir=str(self.tmp / "cache"),
                               max_seq_length=64, doc_stride=16, **kwargs)


def in_process(args: list[str]) -> str:
    """`train.run(args)` in this process: the message after `error: `, checking the status and the one line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = train.run(args)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
    assert status == cli_errors.EXIT_BAD_INPUT and len(lines) == 1, err.getvalue()[-2000:]
    assert f"(set {cli_errors.DEBUG_ENV}=1 for the full traceback)" in err.getvalue()
    return lines[0].removeprefix("error: ")


def subprocess_run(args: list[str]) -> str:
    """`python train.py args` in a subprocess: exit status 2, and stderr ends with the two lines of the error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop(cli_errors.DEBUG_ENV, None)
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    tail = done.stderr.strip().splitlines()[-2:]
    assert done.returncode == 2 and tail[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert tail[1] == f"(set {cli_errors.DEBUG_ENV}=1 for the full traceback)"
    return tail[0].removeprefix("error: ")


def raised(action) -> str:
    """Run `action`; the message train.py prints for what it raises."""
    with pytest.raises(Exception) as info:
        action()
    message = cli_errors.user_error_message(info.value)
    assert message is not None, f"not reported as bad input: {info.value!r}"
    return message


def edit(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    return path


# ---- the cases: (env) -> (message, expected) ----------------------------------------------------------------------
def misspelt_option(env):
    return (subprocess_run(env.finetune("--trainer.max_epochz=1")),
            "unknown option --trainer.max_epochz (did you mean --trainer.max_epochs?); `python train.py fit --help` "
            "lists the options")


def wrong_class_path(env):
    return (subprocess_run(env.finetune("--model.class_path=lightning_modules.finetune.SequenceClassifier")),
            "model.class_path lightning_modules.finetune.SequenceClassifier: module 'lightning_modules.finetune' has "
            "no attribute 'SequenceClassifier' (did you mean lightning_modules.finetune.SequenceClassificationModule?)")


def missing_teacher_directory(env):
    teacher = env.tmp / "artifacts" / "teacher" / "best"
    return (subprocess_run(env.distill(f"--model.init_args.teacher={teacher}")),
            f"model.init_args.teacher: model or tokenizer directory not found: {teacher} (a local path that does not "
            f"exist; hub names have the form 'name' or 'namespace/name'). Create it first, e.g. a tokenizer with "
            f"scripts/train_tokenizer.py or a model with the HFExport callback, or point the option at an existing "
            f"directory.")


def not_installed(package: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed: the logger works")


def logger_refusal(class_path: str, package: str) -> str:
    return (f"trainer.logger {class_path}: needs the {package} package, which is not installed; install it with "
            f"setup.cfg's extra, pip install -e \".[{package}]\", or use a logger that needs nothing more "
            f"(TensorBoard, the default, or lightning.pytorch.loggers.CSVLogger)")


def wandb_logger_without_wandb(env):
    not_installed("wandb")
    logger = "lightning.pytorch.loggers.WandbLogger"
    return subprocess_run(env.finetune(f"--trainer.logger={logger}")), logger_refusal(logger, "wandb")


def mlflow_logger_without_mlflow(env):
    not_installed("mlflow")
    config = env.tmp / "loggers.yaml"  # a list of loggers in a config file: the one that needs a package is named
    config.write_text("trainer:\n  logger:\n    - class_path: lightning.pytorch.loggers.CSVLogger\n"
                      "      init_args: {save_dir: runs}\n    - class_path: MLFlowLogger\n")
    logger = "lightning.pytorch.loggers.MLFlowLogger"
    return in_process([*env.finetune(), "--config", str(config)]), logger_refusal(logger, "mlflow")


def misspelt_model_argument(env):
    return (in_process(env.finetune("--model.init_args.lrr=1e-4")),
            "unknown option model.init_args.lrr: lightning_modules.finetune.SequenceClassificationModule has no "
            "argument 'lrr' (did you mean lr?)")


def model_side_label_names(env):
    return (in_process(env.finetune("--model.init_args.label_names=[bad, good]")),
            "model.init_args.label_names: comes from the data (train.py links the DataModule's label_names into the "
            "model); set data.init_args.label_names instead")


def wrong_value_type(env):
    return (in_process(env.finetune("--data.init_args.batch_size=sixteen")),
            "data.init_args.batch_size: Expected a <class 'int'>. Got value: sixteen (datamodules.glue.GLUEDataModule)")


def yaml_syntax_error(env):
    config = env.tmp / "override.yaml"
    config.write_text("trainer:\n  max_epochs: [1\n")
    return (in_process([*env.finetune(), "--config", str(config)]),
            f"--config {config}: not valid YAML (while parsing a flow sequence at line 2, column 15 did not find "
            f"expected ',' or ']' at line 3, column 1)")


def optimizer_option(env):
    return (in_process(env.finetune("--optimizer=torch.optim.SGD", "--optimizer.lr=0.1")),
            "--optimizer is not used by litbert: every model builds its own AdamW (no weight decay on biases and "
            "LayerNorm weights) with a linear warmup and decay per optimiser step (lightning_modules/optim.py); set "
            "--model.init_args.lr, weight_decay, betas, eps and warmup_ratio or warmup_steps instead")


def lr_scheduler_in_config(env):
    config = env.tmp / "schedule.yaml"
    config.write_text("lr_scheduler:\n  class_path: torch.optim.lr_scheduler.StepLR\n  init_args: {step_size: 3}\n")
    return (in_process([*env.finetune(), "--config", str(config)]),
            "--lr_scheduler is not used by litbert: every model builds its own AdamW (no weight decay on biases and "
            "LayerNorm weights) with a linear warmup and decay per optimiser step (lightning_modules/optim.py); set "
            "--model.init_args.lr, weight_decay, betas, eps and warmup_ratio or warmup_steps instead")


def unknown_task(env):
    return (in_process(env.finetune("--data.init_args.task_name=glue9")),
            f"data.init_args.task_name: unknown task_name 'glue9'; expected one of {GLUE_TASKS} (any case, 'SST-2' or "
            f"'sst2' style) or 'custom' with train_file/validation_file")


def unknown_model(env):
    return (in_process(env.finetune("--model.init_args.pretrained=bert-base-nonexistent")),
            "model.init_args.pretrained: unknown model 'bert-base-nonexistent': not a local directory, and the hub is "
            "offline (HF_HUB_OFFLINE is set) and has no cached copy; give a directory (an HFExport export or a "
            "save_pretrained folder), 'packaged:all-minilm-l6-v2', or a hub name such as 'FacebookAI/roberta-base'")


def batch_size_zero(env):
    return (in_process(env.finetune("--data.init_args.batch_size=0")),
            "data.init_args.batch_size must be a positive number of examples per batch, got 0")


def max_seq_length_beyond_positions(env):
    return (in_process(env.finetune("--data.init_args.max_seq_length=512")),
            f"data.init_args.max_seq_length=512 exceeds the 130 input positions of the model "
            f"(model.init_args.pretrained={env.bert}): set data.init_args.max_seq_length to at most 130")


def student_layers_out_of_range(env):
    return (in_process(env.distill("--model.init_args.student_layers=[0,9]")),
            "student_layers [0, 9]: indices [9] are outside the teacher's layers 0..1")


def student_layers_unknown_name(env):
    return (in_process(env.distill("--model.init_args.student_layers=evenly")),
            "model.init_args.student_layers: student_layers 'evenly': expected a list of teacher layer indices or one "
            "of 'spread', 'every_other'")


def vocabulary_mismatch(env):
    from transformers import AutoTokenizer

    ids = len(AutoTokenizer.from_pretrained(env.bpe))
    teacher_ids = len(AutoTokenizer.from_pretrained(env.teacher))
    return (in_process(env.distill(f"--data.init_args.tokenizer={env.bpe}")),
            f"the data's tokenizer has {ids} ids but the teacher ({env.teacher}) embeds only {teacher_ids}: set "
            f"data.init_args.tokenizer to the teacher's directory")


def resume_last_without_checkpoint(env):
    return (in_process(env.finetune("--ckpt_path=last")),
            f"--ckpt_path last: no last checkpoint in {os.path.realpath(env.tmp / 'run' / 'checkpoints')}; nothing "
            f"was saved there yet, or the run used another --trainer.default_root_dir: start the run without "
            f"--ckpt_path, or give the file (--ckpt_path PATH.ckpt)")


def empty_checkpoint_file(env):
    path = env.tmp / "empty.ckpt"
    path.touch()
    return (in_process(env.finetune(f"--ckpt_path={path}")),
            f"--ckpt_path {path}: the file is empty (0 bytes), not a checkpoint; it was probably cut short by a killed "
            f"process: use an earlier checkpoint")


def truncated_checkpoint_file(env):
    path = env.tmp / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    return (in_process(env.finetune(f"--ckpt_path={path}")),
            f"--ckpt_path {path}: not a readable PyTorch checkpoint (300 bytes, File is not a zip file); it is "
            f"truncated (a killed process) or another kind of file: use an earlier checkpoint")


def resume_with_larger_max_steps(env):
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lightning_modules.optim import configure_adamw_with_warmup

    class Scheduled(BoringModel):
        def configure_optimizers(self):
            return configure_adamw_with_warmup(self, lr=1e-3, warmup_steps=1)

    def fit(max_steps, ckpt_path=None):
        trainer = pl.Trainer(default_root_dir=env.tmp, max_steps=max_steps, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, enable_checkpointing=False)
        trainer.fit(Scheduled(), ckpt_path=ckpt_path)
        return trainer

    fit(2).save_checkpoint(env.tmp / "two.ckpt")
    return (raised(lambda: fit(4, env.tmp / "two.ckpt")),
            "cannot resume: the checkpoint's learning-rate schedule was planned for 2 optimiser steps (warmup 1), "
            "this run plans 4 (warmup 1); resuming would make the learning rate jump. Resume with the original length "
            "(--trainer.max_steps 2, or the original max_epochs, limit_train_batches, accumulate_grad_batches and "
            "devices), or train longer as a new run that starts from the checkpoint's weights (its export, as "
            "model.init_args.pretrained) with a schedule of its own")


def missing_data_file(env):
    nowhere = env.tmp / "nowhere"
    return (raised(lambda: env.glue(data_dir=str(nowhere)).setup("fit")),
            f"data file not found: {nowhere}/glue/SST-2/train.tsv (relative paths are read under "
            f"data_dir={nowhere}; set data_dir or $DATA_DIR to the folder that holds it)")


def empty_custom_tsv(env):
    path = env.tmp / "mine.tsv"
    path.write_text("")
    return (raised(lambda: env.glue("custom", train_file=str(path), text_columns=["sentence"], label_column="label")),
            f"{path}: the file is empty; expected a header line, then rows of tab-separated columns")


def empty_squad_file(env):
    (env.data / "squad" / "empty.json").write_text("\n")
    return (raised(lambda: env.squad("squad/empty.json")),
            f"{env.data}/squad/empty.json: the file is empty; expected SQuAD JSON (an object with a 'data' list of "
            f"articles)")


def wrong_delimiter(env):
    path = env.data / "glue" / "SST-2" / "train.tsv"
    path.write_text("".join(line.replace("\t", ",") + "\n" for line in path.read_text().splitlines()))
    return (raised(lambda: env.glue().setup("fit")),
            f"{path}, line 1: missing column 'sentence'; the header has ['sentence,label'] (a single column: the line "
            f"looks comma-separated, but .tsv files are read tab-separated; rename the file or convert it)")


def missing_column(env):
    path = edit(env.data / "glue" / "RTE" / "train.tsv", "sentence2", "hypothesis")
    return (raised(lambda: env.glue("rte").setup("fit")),
            f"{path}, line 1: missing column 'sentence2'; the header has ['index', 'sentence1', 'hypothesis', 'label']")


def label_outside_the_list(env):
    path = edit(env.data / "glue" / "RTE" / "train.tsv", "\tnot_entailment\n", "\tcontradiction\n")
    return (raised(lambda: env.glue("rte").setup("fit")),
            f"{path}, line 2: label 'contradiction' in column 'label'; expected one of ['entailment', "
            f"'not_entailment']")


def non_utf8_tsv(env):
    path = env.data / "glue" / "RTE" / "train.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" .", b" caf\xe9 .", 1)
    path.write_bytes(b"\n".join(lines))
    return (raised(lambda: env.glue("rte").setup("fit")),
            f"{path}, line 4: bytes b'\\xe9' cannot be decoded as utf-8 (set data.init_args.encoding if the file is "
            f"not utf-8)")


def non_utf8_text_corpus(env):
    from datamodules.text import TextCorpusDataModule

    path = env.tmp / "latin.txt"
    path.write_bytes("one line\n\ncaf\u00e9 two\n".encode("latin-1"))
    data = TextCorpusDataModule(str(env.bpe), data_dir=str(env.data), cache_dir=str(env.tmp / "cache"),
                                val_files=[str(path)], max_seq_length=32, batch_size=4)
    return (raised(lambda: data.setup("validate")),
            f"{path}, line 3: bytes b'\\xe9' cannot be decoded as utf-8 (set data.init_args.encoding if the file is not "
            f"utf-8)")


def json_lines_syntax_error(env):
    path = env.tmp / "mine.jsonl"
    path.write_text('{"text": "fine film", "label": "1"}\n{"text": "dull film", "label": 0,}\n')
    return (raised(lambda: env.glue("custom", train_file=str(path), text_columns=["text"], label_column="label")),
            f"{path}, line 2: not a JSON object (Expecting property name enclosed in double quotes)")


def squad_json_syntax_error(env):
    path = env.data / "squad" / "broken.json"
    path.write_text('{"version": "1.1",\n "data": [\n  {"title": "x", "paragraphs": [}\n]}\n')
    return (raised(lambda: env.squad("squad/broken.json")),
            f"{path}, line 3: not valid JSON (Expecting value)")


def squad_answer_mismatch(env):
    path = env.data / "squad" / "shifted.json"
    data = fixtures.squad_json(n_articles=1, n_paragraphs=1)
    paragraph = data["data"][0]["paragraphs"][0]
    answer = paragraph["qas"][0]["answers"][0]
    start = answer["answer_start"]
    answer["answer_start"] = start + 3  # "rblax 00 River": off by three characters, not whitespace
    path.write_text(json.dumps(data))
    shifted = paragraph["context"][start + 3:start + 3 + len(answer["text"])]
    return (raised(lambda: env.squad("squad/shifted.json").setup("fit")),
            f"{path}: question 'q00000' (data[0].paragraphs[0].qas[0]): answer text 'Zorblax 00 River' does not match "
            f"the context at answer_start {start + 3}, which reads {shifted!r}; the text occurs at character {start}")


CASES = [misspelt_option, wrong_class_path, missing_teacher_directory, wandb_logger_without_wandb,
         mlflow_logger_without_mlflow, misspelt_model_argument, model_side_label_names,
         wrong_value_type,
         yaml_syntax_error, optimizer_option, lr_scheduler_in_config, unknown_task, unknown_model, batch_size_zero,
         max_seq_length_beyond_positions, student_layers_out_of_range, student_layers_unknown_name,
         vocabulary_mismatch,
         resume_last_without_checkpoint, empty_checkpoint_file, truncated_checkpoint_file,
         resume_with_larger_max_steps, missing_data_file, empty_custom_tsv, empty_squad_file, wrong_delimiter,
         missing_column, label_outside_the_list, non_utf8_tsv, non_utf8_text_corpus, json_lines_syntax_error,
         squad_json_syntax_error, squad_answer_mismatch]


@pytest.fixture
def env(tmp_path, data_dir, tiny_bert_dir, wordpiece_tokenizer_dir, bpe_tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tests.conftest import TINY

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)  # a private copy: cases edit their files
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY))
    teacher.config.architectures = ["BertForSequenceClassification"]
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    return Env(data, tmp_path, tiny_bert_dir, tmp_path / "teacher", wordpiece_tokenizer_dir, bpe_tokenizer_dir)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_bad_input_gives_one_clear_line(case, env):
    message, expected = case(env)
    assert message == expected
    assert "\n" not in message


def test_debug_switch_shows_the_traceback(env, monkeypatch):
    monkeypatch.setenv(cli_errors.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="data.init_args.batch_size must be a positive number"):
        train.run(env.finetune("--data.init_args.batch_size=0"))


def test_loggers_with_their_packages_pass(monkeypatch):
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger"}
    wandb = {"class_path": "lightning.pytorch.loggers.WandbLogger"}
    for logger in (None, False, True, csv, [csv], {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}):
        assert cli_errors.missing_logger_package(logger) is None, logger
    if importlib.util.find_spec("wandb") is None:  # the one that needs a package is named, in a list too
        assert cli_errors.missing_logger_package([csv, wandb]) == logger_refusal(wandb["class_path"], "wandb")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())  # as if every package were there
    assert cli_errors.missing_logger_package([csv, wandb]) is None
