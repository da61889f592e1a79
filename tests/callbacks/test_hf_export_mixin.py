"""HFCheckpointMixin: `hf_model` metadata in checkpoints, the teacher kept out of them, bases in the right order."""
import lightning.pytorch as pl
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForSequenceClassification

from lightning_modules.hf_checkpoint import HFCheckpointMixin


class StudentWithTeacher(HFCheckpointMixin, pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=3))
        self.teacher = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32)).requires_grad_(False)

    def model_card_info(self):
        return {"teacher": "tiny-bert", "layer_map": [0]}


def test_teacher_never_in_state_dict_and_not_required_on_load():
    module = StudentWithTeacher()
    state = module.state_dict()
    assert state and all(k.startswith("model.") for k in state)  # no `teacher.` key
    fresh = StudentWithTeacher()
    assert fresh.load_state_dict(state).missing_keys == []  # strict load passes without the teacher
    torch.testing.assert_close(fresh.model.classifier.weight, module.model.classifier.weight)
    del state["model.classifier.weight"]
    with pytest.raises(RuntimeError, match="model.classifier.weight"):  # other missing keys still fail
        fresh.load_state_dict(state)


def test_on_save_checkpoint_stores_hf_model_and_drops_teacher_keys():
    module = StudentWithTeacher()
    checkpoint = {"state_dict": {**module.state_dict(), "teacher.cls.predictions.bias": torch.zeros(40)}}
    module.on_save_checkpoint(checkpoint)
    meta = checkpoint["hf_model"]
    assert meta["auto_class"] == "AutoModelForSequenceClassification"
    assert meta["model_class"] == "DistilBertForSequenceClassification"
    assert meta["config"]["model_type"] == "distilbert" and meta["config"]["n_layers"] == 1
    assert meta["model_card_info"] == {"teacher": "tiny-bert", "layer_map": [0]}
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])


def test_mixin_must_come_before_lightning_module():
    with pytest.raises(TypeError, match="before LightningModule"):
        class WrongOrder(pl.LightningModule, HFCheckpointMixin):
            pass
