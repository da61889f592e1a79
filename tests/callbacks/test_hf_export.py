"""HFExport: best/last/step-N exports that reload with the right Auto class and give the module's outputs."""
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from callbacks.hf_export import HFExport
from lightning_modules.hf_checkpoint import HFCheckpointMixin
from models.auto_class import auto_class
from models.pretrained import load_pretrained, load_tokenizer
from tests import fixtures

LABELS = ["negative", "positive"]


# ---- tiny stand-ins for the real modules (the real ones are tested in test_hf_export_real_modules.py) -------------
class TinyDataModule(pl.LightningDataModule):
    """Eight fixture sentences, tokenized and padded; labels for MLM, classification and QA all in one batch."""

    def __init__(self, tokenizer: str, batch_size: int = 4):
        super().__init__()
        self.save_hyperparameters()  # puts `tokenizer` into the checkpoint's datamodule_hyper_parameters
        self.tokenizer = load_tokenizer(tokenizer)
        rng = random.Random(0)
        enc = self.tokenizer([fixtures.sentence(rng) for _ in range(8)], padding=True, return_tensors="pt")
        self.rows = [{k: v[i] for k, v in enc.items()} for i in range(8)]
        for i, row in enumerate(self.rows):
            row["labels_cls"] = torch.tensor(i % 2)
            row["start_positions"], row["end_positions"] = torch.tensor(1), torch.tensor(2)

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.rows[:4], batch_size=4)


class TinyModule(HFCheckpointMixin, pl.LightningModule):
    """Loads `pretrained` with the Auto class `auto`, trains on the task's loss, logs `val_loss` (and `score`)."""

    def __init__(self, pretrained: str, auto: str = "AutoModelForMaskedLM", teacher: str | None = None,
                 scores: list[float] | None = None, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        kwargs = {}
        if auto == "AutoModelForSequenceClassification":
            kwargs = dict(num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
        self.model = load_pretrained(auto_class(auto), pretrained, **kwargs)
        if teacher:  # the distillation convention: a frozen sub-module that is never checkpointed
            self.teacher = load_pretrained(auto_class("AutoModelForMaskedLM"), teacher).eval().requires_grad_(False)
        self.scores = list(scores or [])  # `score` logged at the k-th validation, to test best tracking

    def inputs(self, batch):
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.model.config.model_type == "bert" else [])
        return {k: batch[k] for k in names if k in batch}

    def loss(self, batch):
        auto = self.hparams.auto
        if auto == "AutoModelForMaskedLM":
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            return self.model(**self.inputs(batch), labels=labels).loss
        if auto == "AutoModelForSequenceClassification":
            return self.model(**self.inputs(batch), labels=batch["labels_cls"]).loss
        return self.model(**self.inputs(batch), start_positions=batch["start_positions"],
                          end_positions=batch["end_positions"]).loss

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))
        if self.scores:
            self.log("score", self.scores.pop(0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.hparams.lr)

    def model_card_info(self):
        info = {"task": "tiny test", "datasets": ["fixture-text"], "recipe": {"lr": self.hparams.lr},
                "metrics": {"val_loss": 1.25}}
        if self.hparams.teacher:
            info.update(teacher=self.hparams.teacher, layer_map=[0, 3])
        return info


def tiny_trainer(tmp_path: Path, callbacks, max_steps: int = 2, **kwargs) -> pl.Trainer:
    kwargs = {"enable_checkpointing": False, **kwargs}
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                      default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, val_check_interval=1, limit_val_batches=1, **kwargs)


def save_tiny(model_class, config_class, tokenizer_dir: Path, out: Path, **config) -> Path:
    """Save a random-init tiny model of `model_class` with the wordpiece tokenizer (a DistilBERT-shaped student)."""
    torch.manual_seed(0)
    tok = load_tokenizer(str(tokenizer_dir))
    model_class(config_class(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **config)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def tiny_distilbert_dir(tmp_path, wordpiece_tokenizer_dir) -> Path:
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    return save_tiny(DistilBertForMaskedLM, DistilBertConfig, wordpiece_tokenizer_dir, tmp_path / "tiny-distilbert",
                     dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=130, dropout=0.0,
                     attention_dropout=0.0)


def outputs(model, batch) -> list[torch.Tensor]:
    """Every logits tensor a model returns on `batch` (start and end logits for QA), in eval mode."""
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    return [out[k] for k in ("logits", "start_logits", "end_logits") if k in out]


# ---- tests ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, auto", [  # BERT/RoBERTa MLM exports: test_hf_export_real_modules.py
    ("distilbert", "AutoModelForSequenceClassification"),
    ("distilbert", "AutoModelForMaskedLM"),
    ("bert", "AutoModelForQuestionAnswering"),
])
def test_fit_exports_reload_with_same_outputs(tmp_path, tiny_bert_dir, tiny_distilbert_dir, backbone, auto):
    pretrained = tiny_bert_dir if backbone == "bert" else tiny_distilbert_dir
    module = TinyModule(str(pretrained), auto=auto)
    dm = TinyDataModule(str(pretrained))
    export = HFExport(dirpath=str(tmp_path / "export"), monitor="val_loss", every_n_steps=1)
    tiny_trainer(tmp_path, [export]).fit(module, datamodule=dm)

    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["best", "last", "step-1", "step-2"]
    last = tmp_path / "export" / "last"
    # Weights readable like every other file of the export (safetensors alone would write them 0600).
    assert (last / "model.safetensors").stat().st_mode & 0o777 == (last / "config.json").stat().st_mode & 0o777
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= {
        p.name for p in last.iterdir()}
    reloaded = load_pretrained(auto_class(auto), str(last))  # the project's loader, offline
    assert type(reloaded) is type(module.model)
    batch = module.inputs(next(iter(dm.val_dataloader())))
    for ours, theirs in zip(outputs(module.model, batch), outputs(reloaded, batch), strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # the exported tokenizer is the DataModule's
    assert load_tokenizer(str(last))("the film").input_ids == dm.tokenizer("the film").input_ids
    if auto == "AutoModelForSequenceClassification":
        assert reloaded.config.id2label == dict(enumerate(LABELS))


@pytest.mark.parametrize("mode, scores, best_step", [("max", [0.5, 0.9, 0.7], 2), ("min", [0.5, 0.9, 0.7], 1)])
def test_best_follows_model_checkpoint_monitor(tmp_path, tiny_bert_dir, mode, scores, best_step):
    module = TinyModule(str(tiny_bert_dir), scores=scores)
    export = HFExport(dirpath=str(tmp_path / "export"), every_n_steps=1)  # no monitor: ModelCheckpoint's
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode=mode)
    tiny_trainer(tmp_path, [export, ckpt], max_steps=3, enable_checkpointing=True).fit(
        module, datamodule=TinyDataModule(str(tiny_bert_dir)))

    assert (export.monitor, export.mode) == ("score", mode)
    assert export.best_step == best_step and export.best_score == pytest.approx(scores[best_step - 1])
    best = load_file(tmp_path / "export" / "best" / "model.safetensors")
    at_best_step = load_file(tmp_path / "export" / f"step-{best_step}" / "model.safetensors")
    last = load_file(tmp_path / "export" / "last" / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(best[name], at_best_step[name], atol=0, rtol=0)
    assert not torch.equal(best[name], last[name])  # training moved on after the best step
    assert f"best score = {scores[best_step - 1]:.6g} at step {best_step}" in (
        tmp_path / "export" / "best" / "README.md").read_text()


def test_standalone_validate_exports_nothing(tmp_path, tiny_bert_dir):
    """`validate` evaluates; only validation inside `fit` may produce a "best" export."""
    module = TinyModule(str(tiny_bert_dir), scores=[0.5])
    export = HFExport(dirpath=str(tmp_path / "export"), monitor="score", mode="max")
    tiny_trainer(tmp_path, [export]).validate(module, datamodule=TinyDataModule(str(tiny_bert_dir)))
    assert export.best_score is None
    assert not (tmp_path / "export").exists()


def test_model_card_front_matter_and_contents(tmp_path, tiny_bert_dir, tiny_distilbert_dir):
    module = TinyModule(str(tiny_distilbert_dir), auto="AutoModelForSequenceClassification", teacher=str(tiny_bert_dir))
    export = HFExport(dirpath=str(tmp_path / "sst2"), monitor="val_loss", export_best=False)
    tiny_trainer(tmp_path, [export], max_steps=1).fit(module, datamodule=TinyDataModule(str(tiny_distilbert_dir)))

    assert [p.name for p in (tmp_path / "sst2").iterdir()] == ["last"]
    text = (tmp_path / "sst2" / "last" / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["license"] == "apache-2.0"
    assert front["pipeline_tag"] == "text-classification" and front["datasets"] == ["fixture-text"]
    assert {"litbert", "distilbert", "distillation"} <= set(front["tags"])
    result = front["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "val_loss", "name": "val_loss", "value": 1.25}
    n_params = sum(p.numel() for p in module.model.parameters())  # parameters() yields tied weights once
    assert f"| parameters | {n_params} |" in text
    assert "Teacher: `tiny-bert`" in text and str(tmp_path) not in text  # no path of this machine
    assert "| 1 | 3 |" in text  # layer map student 1 <- teacher 3
    assert '"negative"' in text  # id2label
    assert "| lr | 0.01 |" in text and "| tokenizer |" in text  # recipe and DataModule hyper-parameters
    reproduce = text.split("## Reproduce")[1]  # the command line (sys.argv of this pytest run), without its path
    assert ("pytest" in reproduce or "__main__.py" in reproduce) and sys.executable not in reproduce
    assert "AutoModelForSequenceClassification.from_pretrained" in text


def test_exports_on_global_rank_zero_only(tmp_path, tiny_bert_dir):
    module = TinyModule(str(tiny_bert_dir))
    export = HFExport(dirpath=str(tmp_path / "export"))
    other_rank = SimpleNamespace(is_global_zero=False, datamodule=None, callback_metrics={})
    assert export.export(other_rank, module, "last", "test") is None
    assert not (tmp_path / "export").exists()


def test_push_to_hub_when_offline_names_the_repo(tmp_path, tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "export" / "last").mkdir(parents=True)
    export = HFExport(dirpath=str(tmp_path / "export"), export_last=False, push_to_hub=True, hub_repo_id="me/tiny")
    trainer = SimpleNamespace(is_global_zero=True)
    with pytest.raises(RuntimeError, match=r"'me/tiny'.*HF_HUB_OFFLINE"):
        export.on_fit_end(trainer, TinyModule(str(tiny_bert_dir)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="best"), "mode"), (dict(every_n_steps=0), "every_n_steps"), (dict(push_to_hub=True), "hub_repo_id"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HFExport(**kwargs)


def test_state_dict_keeps_best_across_resume():
    export = HFExport(monitor="val_loss")
    export.best_score, export.best_step = 0.5, 7
    resumed = HFExport(monitor="val_loss")
    resumed.load_state_dict(json.loads(json.dumps(export.state_dict())))
    assert (resumed.best_score, resumed.best_step) == (0.5, 7)
