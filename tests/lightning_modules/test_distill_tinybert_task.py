"""TinyBERT's task-specific distillation (configs/distill/tinybert_task.yaml): stage 1 matches the intermediate layers
(hidden states through a learned projection, attention scores) of a fine-tuned teacher into a narrower general student;
stage 2 (the config's documented overrides) trains the prediction layer alone on the teacher's soft labels at T = 1."""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, RobertaConfig, RobertaForMaskedLM, \
    RobertaForSequenceClassification

import train
from lightning_modules.distill_tasks import GLUEDistillationModule
from tests.conftest import TINY

CONFIG = "configs/distill/tinybert_task.yaml"


def save_models(tmp_path, tokenizer_dir):
    """A tiny RoBERTa fine-tuned on SST-2 (hidden 32, 4 layers) and a general student (hidden 16, 2 layers, the
    same vocabulary and head count, as TinyBERT's attention-score loss needs)."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, type_vocab_size=1)
    teacher = RobertaForSequenceClassification(RobertaConfig(
        **common, **{**TINY, "num_hidden_layers": 4, "max_position_embeddings": 132}, num_labels=2,
        finetuning_task="sst2", architectures=["RobertaForSequenceClassification"]))
    student = RobertaForMaskedLM(RobertaConfig(
        **common, **{**TINY, "hidden_size": 16, "intermediate_size": 32, "max_position_embeddings": 132}))
    paths = tmp_path / "teacher", tmp_path / "general_student"
    for model, path in zip((teacher, student), paths):
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return paths


def run(tmp_path, data_dir, teacher, student, export, *extra):
    return train.main(args=[
        "fit", "--config", CONFIG, f"--model.init_args.teacher={teacher}", f"--model.init_args.student={student}",
        f"--data.init_args.tokenizer={teacher}", f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.batch_size=4", "--data.init_args.max_seq_length=32", "--data.init_args.max_train_samples=16",
        "--data.init_args.max_eval_samples=8", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.callbacks.init_args.dirpath={export}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", *extra])


def test_tinybert_task_stages(tmp_path, data_dir, bpe_tokenizer_dir):
    teacher, general = save_models(tmp_path, bpe_tokenizer_dir)
    stage1 = run(tmp_path / "stage1", data_dir, teacher, general, tmp_path / "stage1_export")
    module = stage1.model
    assert isinstance(module, GLUEDistillationModule) and module.student.config.hidden_size == 16
    logged = stage1.trainer.logged_metrics
    assert {"train/loss_hidden_mse", "train/loss_attention_mse"} <= set(logged)
    # no prediction term in stage 1: the total is the two layer-wise terms (the others are logged at weight 0)
    torch.testing.assert_close(logged["train/loss"], logged["train/loss_hidden_mse"] + logged["train/loss_attention_mse"])
    assert module.temperature == 1.0
    # the task head is untouched by stage 1 (nothing reads it), the encoder trained
    general_weights = load_file(general / "model.safetensors")
    stage1_weights = load_file(tmp_path / "stage1_export" / "last" / "model.safetensors")
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(stage1_weights[name], general_weights[name])
    assert not any("projection" in k for k in stage1_weights)  # training-only, never exported

    stage2 = run(tmp_path / "stage2", data_dir, teacher, tmp_path / "stage1_export" / "last",
                 tmp_path / "stage2_export", "--model.init_args.layerwise=null", "--model.init_args.alpha_ce=1.0",
                 "--trainer.max_epochs=1")
    logged = stage2.trainer.logged_metrics
    torch.testing.assert_close(logged["train/loss"], logged["train/loss_ce"])  # soft labels only (alpha_hard 0)
    assert not any("hidden_mse" in k or "attention_mse" in k for k in logged)
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stage2_export" / "last")
    assert type(final).__name__ == "RobertaForSequenceClassification" and final.config.hidden_size == 16
    head = "classifier.out_proj.weight"
    assert not torch.equal(load_file(tmp_path / "stage2_export" / "last" / "model.safetensors")[head],
                           stage1_weights[head])  # stage 2 trains the prediction layer
