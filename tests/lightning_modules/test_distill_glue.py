"""Task-specific distillation on GLUE via train.py (configs/distill/glue.yaml) on the tiny fixtures."""
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import train
from lightning_modules.distill_tasks import GLUEDistillationModule
from tests.conftest import TINY

CONFIG = "configs/distill/glue.yaml"


@pytest.fixture
def tiny_bert_sst2_teacher(tmp_path, wordpiece_tokenizer_dir):
    """A random-init 6-layer BERT sequence classifier (like MiniLM-L6), two labels, saved with its tokenizer."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=2,
                        id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1},
                        **{**TINY, "num_hidden_layers": 6})
    model = BertForSequenceClassification(config)
    model.config.architectures = ["BertForSequenceClassification"]
    out = tmp_path / "teacher"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def glue_args(tmp_path, data_dir, teacher, *extra):
    return ["fit", "--config", CONFIG, f"--model.init_args.teacher={teacher}", f"--data.init_args.tokenizer={teacher}",
            f"--data.init_args.data_dir={data_dir}", "--data.init_args.batch_size=4",
            "--data.init_args.max_seq_length=32", f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.accelerator=cpu", *extra]


def test_glue_config_prints(capsys):
    with pytest.raises(SystemExit):
        train.main(args=["fit", "--config", CONFIG, "--print_config"])
    out = capsys.readouterr().out
    assert "GLUEDistillationModule" in out and "TemperatureAnnealing" in out and "gradient_clip_val: 5.0" in out


def test_glue_fast_dev_run_trains_the_student_only(tmp_path, data_dir, tiny_bert_sst2_teacher):
    cli = train.main(args=glue_args(tmp_path, data_dir, tiny_bert_sst2_teacher, "--trainer.fast_dev_run=true"))
    module = cli.model
    assert isinstance(module, GLUEDistillationModule)
    assert type(module.model).__name__ == "DistilBertForSequenceClassification"
    assert module.model.config.n_layers == 3 and module.layer_map == [0, 2, 5]
    logged = cli.trainer.logged_metrics
    for key in ("train/loss", "train/loss_ce", "train/loss_hard", "val/accuracy", "val/score"):
        assert key in logged, key
    assert "train/loss_cos" not in logged  # alpha_cos 0 (the config's): not computed
    assert not module.teacher.training
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert not any(k.startswith("teacher.") for k in module.state_dict())
    # The student's model card: the fine-tuning card with the teacher, layer map and distillation recipe merged in.
    card = module.model_card_info()
    assert card["teacher"] == str(tiny_bert_sst2_teacher) and card["layer_map"] == [0, 2, 5]
    assert card["recipe"]["alpha_ce"] == module.hparams.alpha_ce and "base_model" not in card["recipe"]
    assert card["description"].startswith("DistilBertForSequenceClassification distilled on sst2 from the teacher")


def test_teacher_without_a_task_head_is_a_clear_error(tmp_path, data_dir, tiny_bert_dir):
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        GLUEDistillationModule(teacher=str(tiny_bert_dir), task_name="sst2", num_labels=2)


def test_ablation_switches_run(tmp_path, data_dir, tiny_bert_sst2_teacher):
    cli = train.main(args=glue_args(tmp_path, data_dir, tiny_bert_sst2_teacher, "--trainer.fast_dev_run=true",
                                    "--model.init_args.random_init=true", "--model.init_args.alpha_ce=0",
                                    "--model.init_args.alpha_cos=1.0", "--model.init_args.cos_layers=mapped"))
    module = cli.model
    assert module.hparams.random_init and module.cos_pairs == [(0, 0), (1, 1), (2, 3), (3, 6)]  # map [0, 2, 5]
    logged = cli.trainer.logged_metrics
    # alpha_ce = 0: the total is the hard + cosine terms only, but the soft term is still logged
    assert float(logged["train/loss"]) == pytest.approx(float(logged["train/loss_hard"]) +
                                                        float(logged["train/loss_cos"]), rel=1e-4)
    assert float(logged["train/loss_ce"]) > 0


def test_regression_soft_loss_and_student_equal_teacher(tmp_path, wordpiece_tokenizer_dir):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                       num_labels=1, problem_type="regression", **TINY))
    teacher.config.architectures = ["BertForSequenceClassification"]
    teacher.save_pretrained(tmp_path / "stsb")
    tok.save_pretrained(tmp_path / "stsb")
    ids = torch.randint(5, len(tok), (3, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0.5, 2.0, 4.5])}
    same = GLUEDistillationModule(teacher=str(tmp_path / "stsb"), student=str(tmp_path / "stsb"), task_name="stsb",
                                  num_labels=1, is_regression=True).eval()
    assert same.distillation_terms(batch)["ce"].item() == pytest.approx(0.0, abs=1e-8)
    student = GLUEDistillationModule(teacher=str(tmp_path / "stsb"), task_name="stsb", num_labels=1,
                                     is_regression=True, student_layers=[1]).eval()
    terms = student.distillation_terms(batch)
    with torch.no_grad():
        s = student.model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        t = student.teacher(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    assert terms["ce"].item() == pytest.approx(torch.nn.functional.mse_loss(s, t).item(), rel=1e-5)
