"""models/convert.py: Auto class choice, atomic export directories, .ckpt -> export round trip, hub errors."""
import hashlib
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForMaskedLM, BertModel,
                          DistilBertConfig, DistilBertForMaskedLM, DistilBertForSequenceClassification,
                          RobertaConfig, RobertaForQuestionAnswering)

from models import convert, hub
from models.auto_class import auto_class_name
from models.convert import convert_checkpoint, save_export
from models.hub import push_export_to_hub
from models.pretrained import load_tokenizer
from tests.callbacks.test_hf_export import LABELS, TinyDataModule, TinyModule, outputs, save_tiny, tiny_trainer

DISTIL = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=130, dropout=0.0,
              attention_dropout=0.0)
BERT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=130, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, wordpiece_tokenizer_dir):
    """A DistilBERT classifier student with a BERT teacher, fitted 2 steps; its last.ckpt, module and data."""
    root = tmp_path_factory.mktemp("convert")
    student = save_tiny(DistilBertForMaskedLM, DistilBertConfig, wordpiece_tokenizer_dir, root / "student", **DISTIL)
    teacher = save_tiny(BertForMaskedLM, BertConfig, wordpiece_tokenizer_dir, root / "teacher", **BERT)
    module = TinyModule(str(student), auto="AutoModelForSequenceClassification", teacher=str(teacher))
    dm = TinyDataModule(str(student))
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", monitor="val_loss", save_last=True)
    tiny_trainer(root, [ckpt], enable_checkpointing=True).fit(module, datamodule=dm)
    return Path(ckpt.last_model_path), module, dm


def test_auto_class_name_per_head():
    tiny = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)

    class SparseBertForMaskedLM(BertForMaskedLM):  # a custom subclass still loads as its parent
        pass

    assert auto_class_name(BertForMaskedLM(BertConfig(**tiny))) == "AutoModelForMaskedLM"
    assert auto_class_name(SparseBertForMaskedLM(BertConfig(**tiny))) == "AutoModelForMaskedLM"
    assert auto_class_name(BertModel(BertConfig(**tiny))) == "AutoModel"
    assert auto_class_name(RobertaForQuestionAnswering(RobertaConfig(**tiny))) == "AutoModelForQuestionAnswering"
    assert auto_class_name(DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2, hidden_dim=32))) == \
        "AutoModelForSequenceClassification"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_export_leaves_no_trace_and_keeps_previous(tmp_path, tiny_bert_dir, monkeypatch):
    model = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    target = tmp_path / "exports" / "best"

    def fail_midway(self, save_directory, **kwargs):  # the weights are on disk, the tokenizer crashes
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_export(model, target, tokenizer, "card")
    assert list(target.parent.iterdir()) == []  # no target, no stray temporary directory
    monkeypatch.undo()

    save_export(model, target, tokenizer, "card")  # a good export ...
    before = {p.name: _digest(p) for p in target.iterdir()}
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.add_(1.0)
    monkeypatch.setattr(type(tokenizer), "save_pretrained", fail_midway)
    with pytest.raises(OSError):
        save_export(model, target, tokenizer, "new card")  # ... survives a failed replacement untouched
    assert [p.name for p in target.parent.iterdir()] == ["best"]
    assert {p.name: _digest(p) for p in target.iterdir()} == before


def test_checkpoint_has_no_teacher_and_reloads(trained):
    ckpt_path, module, _ = trained
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert checkpoint["hf_model"]["auto_class"] == "AutoModelForSequenceClassification"
    reloaded = TinyModule.load_from_checkpoint(ckpt_path)  # strict load; the teacher comes from its own path
    torch.testing.assert_close(reloaded.model.classifier.weight, module.model.classifier.weight)


def test_convert_script_round_trip(trained, tmp_path):
    from scripts.convert_checkpoint import main

    ckpt_path, module, dm = trained
    out = main([str(ckpt_path), str(tmp_path / "converted")])  # tokenizer from datamodule_hyper_parameters
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model) is DistilBertForSequenceClassification and model.config.id2label == dict(enumerate(LABELS))
    batch = module.inputs(next(iter(dm.val_dataloader())))
    torch.testing.assert_close(outputs(model, batch)[0], outputs(module.model, batch)[0], atol=1e-5, rtol=0)
    assert load_tokenizer(str(out))("the film").input_ids == dm.tokenizer("the film").input_ids
    card = (out / "README.md").read_text()
    assert "Converted from the Lightning checkpoint `last.ckpt`" in card and "| best val_loss |" in card
    assert "| 1 | 3 |" in card  # the student's layer map, from model_card_info() stored in the checkpoint


def test_convert_errors_name_the_problem(trained, tmp_path):
    ckpt_path, _, _ = trained
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    del checkpoint["datamodule_hyper_parameters"]
    torch.save(checkpoint, tmp_path / "no_tokenizer.ckpt")
    with pytest.raises(ValueError, match="--tokenizer"):
        convert_checkpoint(tmp_path / "no_tokenizer.ckpt", tmp_path / "out")
    del checkpoint["hf_model"]
    torch.save(checkpoint, tmp_path / "plain.ckpt")
    with pytest.raises(KeyError, match="HFCheckpointMixin"):
        convert_checkpoint(tmp_path / "plain.ckpt", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    with pytest.raises(ValueError, match="cannot load the tokenizer 'no/such-tokenizer'"):
        convert_checkpoint(ckpt_path, tmp_path / "out", tokenizer="no/such-tokenizer")
    assert not (tmp_path / "out").exists()


def test_convert_script_reports_bad_input_without_traceback(tmp_path, capsys):
    from scripts.convert_checkpoint import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "error: checkpoint" in capsys.readouterr().err


def test_push_without_network_names_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"'me/tiny'.*HF_HUB_OFFLINE"):
        push_export_to_hub(tmp_path, "me/tiny")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "hub_offline", lambda: False)  # huggingface_hub read the variable at import

    def no_network(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", no_network)
    with pytest.raises(RuntimeError, match=r"'me/tiny'.*ConnectionError: Name or service not known"):
        push_export_to_hub(tmp_path, "me/tiny")


def test_rebuild_accepts_torch_compile_prefixes():
    """A module that trained `torch.compile(model)` saves `model._orig_mod.*` keys; the converter strips them."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    checkpoint = {"hf_model": {"config": model.config.to_dict(), "auto_class": "AutoModelForMaskedLM"},
                  "state_dict": {f"model._orig_mod.{k}": v for k, v in model.state_dict().items()}}
    rebuilt = convert.hf_model_from_checkpoint(checkpoint)
    torch.testing.assert_close(rebuilt.cls.predictions.bias, model.cls.predictions.bias, atol=0, rtol=0)
    torch.testing.assert_close(rebuilt.bert.embeddings.word_embeddings.weight,
                               model.bert.embeddings.word_embeddings.weight, atol=0, rtol=0)
