"""HFExport on the real modules through train.py and their YAMLs, and exports used again as `pretrained`/`teacher`.

Every run is a one-batch `fast_dev_run` on the tiny fixtures, in a temporary working directory (the recipes' relative
`artifacts/` and `runs/` paths land there).
"""
import inspect
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

import train
from models.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[2]
TINY_MLM = ["--model.init_args.hidden_size=32", "--model.init_args.num_hidden_layers=2",
            "--model.init_args.num_attention_heads=4", "--model.init_args.intermediate_size=64",
            "--model.init_args.max_seq_length=32", "--model.init_args.warmup_steps=0"]


def run(config: str, *args: str):
    """`train.py fit --config configs/<config>` on one CPU batch."""
    return train.main(args=["fit", "--config", str(ROOT / "configs" / config), "--trainer.fast_dev_run=true",
                            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                            "--trainer.enable_model_summary=false", *args])


def into(directory: Path) -> list[str]:
    """Logs, checkpoints and the default HFExport dirpath (the log dir; default_root_dir under fast_dev_run)."""
    return [f"--trainer.default_root_dir={directory}", f"--trainer.logger.init_args.save_dir={directory}"]


def model_inputs(model, batch: dict) -> dict:
    """The batch entries `model.forward` accepts (DistilBERT takes no token_type_ids)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids") and k in accepted}


def assert_same_logits(module_model, export_dir: Path, auto, batch: dict):
    exported = load_pretrained(auto, str(export_dir))
    assert type(exported) is type(module_model)
    module_model.eval()
    with torch.no_grad():
        expected = module_model(**model_inputs(module_model, batch)).logits
        actual = exported(**model_inputs(exported, batch)).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def only_export(root: Path, name: str) -> Path:
    found = sorted(root.rglob(f"*/{name}/model.safetensors"))
    assert len(found) == 1, found
    return found[0].parent


def test_mlm_export_then_finetune_and_distill_from_it(tmp_path, monkeypatch, data_dir, bpe_tokenizer_dir):
    monkeypatch.chdir(tmp_path)
    cli = run("mlm/roberta_small.yaml", f"--data.init_args.tokenizer={bpe_tokenizer_dir}",
              f"--data.init_args.data_dir={data_dir}", "--data.init_args.train_files=[wikitext-2/train.txt]",
              "--data.init_args.max_seq_length=32", "--data.init_args.batch_size=4", *TINY_MLM)
    mlm_export = tmp_path / "artifacts" / "mlm" / "roberta_small" / "export" / "last"
    assert type(cli.model.model).__name__ == "RobertaForMaskedLM"
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert_same_logits(cli.model.model, mlm_export, AutoModelForMaskedLM, batch)
    card = (mlm_export / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "masked language modelling" in card

    # the pretrained export is the starting point of fine-tuning (tokenizer from the same directory)
    cli = run("finetune/glue.yaml", f"--model.init_args.pretrained={mlm_export}",
              f"--data.init_args.tokenizer={mlm_export}", f"--data.init_args.data_dir={data_dir}",
              "--data.init_args.task_name=sst2", "--data.init_args.batch_size=4", "--data.init_args.max_seq_length=32",
              *into(tmp_path / "ft"))
    assert type(cli.model.model).__name__ == "RobertaForSequenceClassification"
    finetuned = only_export(tmp_path / "ft", "last")
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert_same_logits(cli.model.model, finetuned, AutoModelForSequenceClassification, batch)

    # ... and the teacher of general distillation, whose student exports as a masked LM again
    cli = run("distill/roberta_general.yaml", f"--model.init_args.teacher={mlm_export}",
              f"--data.init_args.tokenizer={mlm_export}", f"--data.init_args.data_dir={data_dir}",
              "--data.init_args.max_seq_length=32", "--data.init_args.batch_size=4", "--model.init_args.warmup_ratio=0")
    student = tmp_path / "artifacts" / "distill" / "roberta_general" / "export" / "last"
    assert cli.model.model.config.num_hidden_layers == 1  # one teacher layer out of two
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert_same_logits(cli.model.model, student, AutoModelForMaskedLM, batch)
    card = (student / "README.md").read_text()  # the teacher, relative to the run's directory
    assert "artifacts/mlm/roberta_small/export/last" in card and str(mlm_export) not in card


def test_finetune_export_is_a_distillation_teacher_and_student_exports_as_distilbert(
        tmp_path, monkeypatch, data_dir, tiny_bert_dir):
    monkeypatch.chdir(tmp_path)
    run("finetune/glue.yaml", f"--model.init_args.pretrained={tiny_bert_dir}",
        f"--data.init_args.tokenizer={tiny_bert_dir}",
        f"--data.init_args.data_dir={data_dir}", "--data.init_args.task_name=sst2", "--data.init_args.batch_size=4",
        "--data.init_args.max_seq_length=32", *into(tmp_path / "teacher"))
    teacher = only_export(tmp_path / "teacher", "best")

    cli = run("distill/glue.yaml", f"--model.init_args.teacher={teacher}", f"--data.init_args.tokenizer={teacher}",
              f"--data.init_args.data_dir={data_dir}", "--data.init_args.task_name=sst2",
              "--data.init_args.batch_size=4", "--data.init_args.max_seq_length=32",
              "--model.init_args.student_layers=[0,2]", *into(tmp_path / "student"))
    student = only_export(tmp_path / "student", "last")
    assert type(cli.model.model).__name__ == "DistilBertForSequenceClassification"
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert_same_logits(cli.model.model, student, AutoModelForSequenceClassification, batch)
    card = (student / "README.md").read_text()
    assert f"{teacher.name}`" in card and str(teacher) not in card and "distillation" in card  # no absolute path
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["datasets"] == (cli.model.model_card_info().get("datasets") or ["nyu-mll/glue"])
    assert front["model-index"][0]["name"] == "distilbert-sst2"
    dataset = front["model-index"][0]["results"][0]["dataset"]
    assert (dataset["type"], dataset["config"], dataset["split"]) == (front["datasets"][0], "sst2", "validation")
    assert not any(p.name.startswith("teacher") for p in student.iterdir())  # only the student is exported

