"""Layer-wise objectives in the distillation modules (TinyBERT, MiniLM, MiniLMv2) and students of any shape: a step
with each objective on, zero terms for student == teacher, gradients in the student and the projection only, clear
errors, and the two configs through train.py with an export free of projections."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

import train
from lightning_modules.distill import MaskedLMDistillationModule
from lightning_modules.layerwise_losses import OBJECTIVES
from models.convert import hf_model_from_checkpoint
from tests.lightning_modules.test_distill import masked_batches, module
from tests.lightning_modules.test_distill_glue import glue_args
from tests.lightning_modules.test_distill_glue import tiny_bert_sst2_teacher as _teacher_fixture

tiny_bert_sst2_teacher = _teacher_fixture  # the GLUE tests' teacher fixture, used here by name

ROOT = Path(__file__).resolve().parents[2]
NARROW = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 4, "intermediate_size": 32}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_one_step_with_each_objective_trains_the_student_and_projection_only(tiny_roberta_dir, objective):
    batch = masked_batches(tiny_roberta_dir, n_batches=1)[0]
    m = module(tiny_roberta_dir, student_size=NARROW, alpha_cos=0.0, layerwise={objective: 0.5})
    terms = m.distillation_terms(batch)
    assert set(terms) == {"ce", "mlm", objective, "total"}
    assert torch.isfinite(terms[objective]) and terms[objective] > 0
    expected = 5.0 * terms["ce"] + 2.0 * terms["mlm"] + 0.5 * terms[objective]
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    layer = m.student.roberta.encoder.layer[-1].attention.self
    assert layer.query.weight.grad is not None or objective == "hidden_mse"
    assert all(p.grad is not None for p in m.projections.parameters())
    assert ("hidden" in m.projections) == (objective == "hidden_mse")  # 16 -> 32 only where hidden states meet


def test_every_term_vanishes_when_the_student_is_the_teacher(tiny_bert_dir):
    batch = masked_batches(tiny_bert_dir, n_batches=1)[0]
    m = module(tiny_bert_dir, student=str(tiny_bert_dir), layerwise={name: 1.0 for name in OBJECTIVES})
    assert len(m.projections) == 0  # same width: no projection
    terms = m.distillation_terms(batch)
    for name in OBJECTIVES:
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name


def test_relation_objective_with_other_head_counts_and_clear_errors(tiny_roberta_dir):
    batch = masked_batches(tiny_roberta_dir, n_batches=1)[0]
    three_heads = {**NARROW, "hidden_size": 24, "num_attention_heads": 3}  # the teacher has 4 heads, width 32
    m = module(tiny_roberta_dir, student_size=three_heads, alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0,
               layerwise={"qkv_relation_kl": 1.0}, relation_heads=8, relation_teacher_layer=2)
    assert m.relation_pair == (1, 2)
    terms = m.distillation_terms(batch)
    assert set(terms) == {"qkv_relation_kl", "total"}  # no LM heads run with alpha_ce = alpha_mlm = 0
    terms["total"].backward()
    with pytest.raises(ValueError, match="compare attention heads one to one"):
        module(tiny_roberta_dir, student_size=three_heads, alpha_cos=0.0, layerwise={"attention_kl": 1.0})
    with pytest.raises(ValueError, match="must divide both widths"):
        module(tiny_roberta_dir, student_size=three_heads, alpha_cos=0.0, layerwise={"qkv_relation_kl": 1.0},
               relation_heads=5)
    with pytest.raises(ValueError, match="unknown objectives"):
        module(tiny_roberta_dir, layerwise={"hidden_kl": 1.0})
    with pytest.raises(ValueError, match="set alpha_cos: 0"):
        module(tiny_roberta_dir, student_size=NARROW)


def test_layer_maps(tiny_bert_dir):
    extracted = module(tiny_bert_dir, student_layers=[1, 3], layerwise={"hidden_mse": 1.0, "attention_mse": 1.0})
    assert extracted.hidden_pairs == [(0, 0), (1, 2), (2, 4)] and extracted.layer_pairs == [(0, 1), (1, 3)]
    uniform = module(tiny_bert_dir, student_size={"num_hidden_layers": 2, "hidden_size": 16}, alpha_cos=0.0,
                     layerwise={"hidden_mse": 1.0})
    assert uniform.hidden_pairs == [(0, 0), (1, 2), (2, 4)] and uniform.layer_map is None
    given = module(tiny_bert_dir, layerwise={"attention_mse": 1.0}, layerwise_layers=[[0, 0], [-1, -1]])
    assert given.hidden_pairs == [(0, 0), (2, 4)] and given.layer_pairs == [(1, 3)]


def test_sized_students(tiny_bert_dir):
    # depth only: layers copied from the teacher (first and last by default), BERT kept as BERT
    deep = module(tiny_bert_dir, student_size={"num_hidden_layers": 2})
    assert type(deep.student).__name__ == "BertForMaskedLM" and deep.layer_map == [0, 3]
    teacher_layer = deep.teacher.bert.encoder.layer[3].attention.self.query.weight
    torch.testing.assert_close(deep.student.bert.encoder.layer[1].attention.self.query.weight, teacher_layer)
    # another width: random init, the teacher's family and vocabulary
    narrow = module(tiny_bert_dir, student_size=NARROW, alpha_cos=0.0)
    assert narrow.student.config.hidden_size == 16 and narrow.layer_map is None
    assert narrow.student.config.vocab_size == narrow.teacher.config.vocab_size
    assert "random init" in narrow.model_card_info()["recipe"]["student"]
    with pytest.raises(ValueError, match="unknown keys"):
        module(tiny_bert_dir, student_size={"layers": 2})
    with pytest.raises(ValueError, match="needs the teacher's widths"):
        module(tiny_bert_dir, student_size=NARROW, student_layers=[0, 1], alpha_cos=0.0)


@pytest.mark.parametrize("config, objectives, width", [("tinybert_general", ["hidden_mse", "attention_mse"], 16),
                                                      ("minilmv2_general", ["qkv_relation_kl"], 24)])
def test_config_trains_and_exports_the_plain_student(tmp_path, data_dir, tiny_roberta_dir, monkeypatch, config,
                                                    objectives, width):
    monkeypatch.chdir(tmp_path)
    heads = 4 if config == "tinybert_general" else 3
    cli = train.main(args=[
        "fit", "--config", str(ROOT / "configs" / "distill" / f"{config}.yaml"),
        f"--model.init_args.teacher={tiny_roberta_dir}", f"--data.init_args.tokenizer={tiny_roberta_dir}",
        f"--data.init_args.data_dir={data_dir}", "--data.init_args.max_seq_length=64",
        "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
        # the teacher fixture is 32 wide with 4 heads: a narrower student, as the config's 128/192 of 256
        f"--model.init_args.student_size={{num_hidden_layers: 2, hidden_size: {width}, num_attention_heads: {heads}, "
        f"intermediate_size: 32}}", "--model.init_args.relation_heads=4",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'export'}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ])
    module_ = cli.model
    assert isinstance(module_, MaskedLMDistillationModule) and module_.student.config.hidden_size == width
    logged = cli.trainer.logged_metrics
    for name in objectives:
        assert f"train/loss_{name}" in logged and f"val_distill/loss_{name}" in logged
    assert "train/loss_ce" not in logged and "val_distill/loss" in logged
    cli.trainer.save_checkpoint(tmp_path / "end.ckpt")
    ckpt = torch.load(tmp_path / "end.ckpt", weights_only=False)
    state_keys = set(ckpt["state_dict"])
    assert any(k.startswith("model.") for k in state_keys) and not any(k.startswith("teacher.") for k in state_keys)
    assert any(k.startswith("projections.") for k in state_keys) == (config == "tinybert_general")
    rebuilt = hf_model_from_checkpoint(ckpt)  # scripts/convert_checkpoint.py: the student alone, no projection
    assert type(rebuilt).__name__ == "RobertaForMaskedLM" and rebuilt.config.hidden_size == width
    export = tmp_path / "export" / "last"
    weights = load_file(export / "model.safetensors")
    assert not any("projection" in k or k.startswith("teacher") for k in weights)
    exported = AutoModelForMaskedLM.from_pretrained(export)
    assert type(exported).__name__ == "RobertaForMaskedLM" and exported.config.hidden_size == width
    torch.testing.assert_close(exported.roberta.encoder.layer[0].attention.self.query.weight,
                               module_.student.roberta.encoder.layer[0].attention.self.query.weight)


def test_glue_distillation_with_layerwise_objectives(tmp_path, data_dir, tiny_bert_sst2_teacher):
    """Task distillation: the objectives read the teacher's insides, so it runs at every step on every position
    (no cached logits, no first-token last layer), and a BERT student of another width stays a BERT."""
    cli = train.main(args=glue_args(
        tmp_path, data_dir, tiny_bert_sst2_teacher, "--trainer.fast_dev_run=true",
        "--model.init_args.student_layers=null",
        "--model.init_args.student_size={num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 4}",
        "--model.init_args.layerwise={hidden_mse: 1.0, attention_kl: 1.0, qkv_relation_kl: 1.0}"))
    module_ = cli.model
    assert type(module_.student).__name__ == "BertForSequenceClassification"
    logged = cli.trainer.logged_metrics
    for key in ("train/loss_ce", "train/loss_hard", "train/loss_hidden_mse", "train/loss_attention_kl",
                "train/loss_qkv_relation_kl", "val/accuracy"):
        assert key in logged, key
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long)}
    assert module_.internals_on() and module_.last_layer_rows(module_.student, batch) is None
    assert "projections.hidden.weight" in module_.state_dict()


def test_objectives_under_bf16_autocast_match_fp32(tiny_roberta_dir):
    """bf16-mixed (the GPU default): hooked q/k/v and projections come in bf16, the losses are taken in fp32."""
    batch = masked_batches(tiny_roberta_dir, n_batches=1)[0]
    m = module(tiny_roberta_dir, student_size=NARROW, alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=0.0,
               layerwise={name: 1.0 for name in OBJECTIVES})
    full = m.distillation_terms(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = m.distillation_terms(batch)
    mixed["total"].backward()
    for name in OBJECTIVES:
        assert mixed[name].dtype == torch.float32
        assert mixed[name].item() == pytest.approx(full[name].item(), rel=0.1, abs=1e-4), name
    assert all(torch.isfinite(p.grad).all() for p in m.projections.parameters())
