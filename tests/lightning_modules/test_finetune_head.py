"""Fine-tuning a classifier on another task than its head was trained for starts from a new head (issue 13); the same
task keeps it; the task is recorded in the model's config, so litbert's own exports say what their head knows."""
import logging

import pytest
import torch
from transformers import (AutoConfig, BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification)

from datamodules.tasks import GLUE_TASKS
from lightning_modules.distill_tasks import GLUEDistillationModule
from lightning_modules.finetune import SequenceClassificationModule
from models.model_card import render_model_card
from models.pretrained import load_tokenizer
from models.task_head import head_module_names, other_task_reason, recorded_task

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def task_args(task: str) -> dict:
    """The data facts train.py links from a GLUE DataModule of `task`."""
    spec = GLUE_TASKS[task]
    return dict(task_name=task, num_labels=spec.num_labels, label_names=list(spec.label_names),
                label_display_names=list(spec.model_label_names))


def save_classifier(directory, tokenizer_dir, task: str | None = "sst2", labels=("negative", "positive"),
                    card_task: str | None = None, distilbert: bool = False):
    """A tiny classifier saved as if fine-tuned on `task` (None: the task not recorded in its config; `card_task`:
    recorded only by a litbert model card, as exports made before issue 13)."""
    torch.manual_seed(0)
    tok = load_tokenizer(str(tokenizer_dir))
    id2label = dict(enumerate(labels)) if labels else None
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, finetuning_task=task,
                  **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if labels else {}))
    if distilbert:
        model = DistilBertForSequenceClassification(DistilBertConfig(
            dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, **common))
    else:
        model = BertForSequenceClassification(BertConfig(**SIZE, **common))
    with torch.no_grad():  # a head unlike any initialisation: "trained"
        for name in head_module_names(model):
            for param in getattr(model, name).parameters():
                param.add_(0.5)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    if card_task:
        (directory / "README.md").write_text(render_model_card(model, {"task": card_task},
                                                               data_hyper_parameters={"task_name": card_task}))
    return model


def head_state(model) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n in head_module_names(model)
            for k, v in getattr(model, n).state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def sst2_classifier(tmp_path, wordpiece_tokenizer_dir):
    path = tmp_path / "sst2-classifier"
    return path, save_classifier(path, wordpiece_tokenizer_dir)


def test_another_task_starts_from_a_new_head(sst2_classifier, caplog):
    path, saved = sst2_classifier
    with caplog.at_level(logging.INFO):
        module = SequenceClassificationModule(str(path), **task_args("rte"))
    model = module.model
    new = head_state(model)
    assert all(not torch.equal(new[k], v) for k, v in head_state(saved).items())  # every head tensor replaced
    assert torch.equal(new["classifier.bias"], torch.zeros(2))  # BERT's _init_weights: zero bias, N(0, 0.02) weight
    assert new["classifier.weight"].std().item() == pytest.approx(saved.config.initializer_range, rel=0.5)
    # the encoder (and BERT's pooler, part of it) is the checkpoint's
    assert torch.equal(model.bert.pooler.dense.weight, saved.bert.pooler.dense.weight)
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, saved.bert.encoder.layer[1].output.dense.weight)
    lines = [r.getMessage() for r in caplog.records if "new classification head" in r.getMessage()]
    assert lines == [f"{path}: its classification head was trained on sst2, not rte; fine-tuning on rte starts from "
                     f"a new classification head (classifier)"]
    assert model.config.finetuning_task == "rte" and model.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert model.training


def test_the_same_task_keeps_the_trained_head(sst2_classifier, caplog):
    path, saved = sst2_classifier
    with caplog.at_level(logging.INFO):
        module = SequenceClassificationModule(str(path), **task_args("sst2"))
    assert same(head_state(module.model), head_state(saved))
    assert not [r for r in caplog.records if "new classification head" in r.getMessage()]


def test_another_label_count_loads_with_a_new_head(sst2_classifier):
    """SST-2 (2 labels) -> MNLI (3): failed to load before (size mismatch), now a new 3-way head."""
    path, saved = sst2_classifier
    model = SequenceClassificationModule(str(path), **task_args("mnli")).model
    assert model.classifier.weight.shape == (3, 32) and torch.equal(model.classifier.bias, torch.zeros(3))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved.bert.embeddings.word_embeddings.weight)


def test_distilbert_head_is_pre_classifier_and_classifier(tmp_path, wordpiece_tokenizer_dir):
    saved = save_classifier(tmp_path / "d", wordpiece_tokenizer_dir, distilbert=True)
    model = SequenceClassificationModule(str(tmp_path / "d"), **task_args("rte")).model
    assert head_module_names(model) == ["pre_classifier", "classifier"]
    new, old = head_state(model), head_state(saved)
    assert all(not torch.equal(new[k], v) for k, v in old.items())
    kept = SequenceClassificationModule(str(tmp_path / "d"), **task_args("sst2")).model
    assert same(head_state(kept), old)


def test_what_the_checkpoint_records_decides(tmp_path, wordpiece_tokenizer_dir):
    # an export made before issue 13: the task only in the model card's data table
    card_only = save_classifier(tmp_path / "card", wordpiece_tokenizer_dir, task=None, card_task="sst2")
    assert recorded_task(card_only.config, tmp_path / "card") == "sst2"
    model = SequenceClassificationModule(str(tmp_path / "card"), **task_args("rte")).model
    assert not torch.equal(model.classifier.weight, card_only.classifier.weight)
    # no task recorded: other label names mean another task; placeholder names say nothing, the head is kept
    save_classifier(tmp_path / "named", wordpiece_tokenizer_dir, task=None)
    config = AutoConfig.from_pretrained(tmp_path / "named")
    assert other_task_reason(config, tmp_path / "named", "rte", 2, [["entailment", "not_entailment"]]) == (
        "its classification head was trained on the labels ['negative', 'positive'], not ['entailment', "
        "'not_entailment']")
    assert other_task_reason(config, tmp_path / "named", "sst2", 2, [["Negative", "Positive"], ["0", "1"]]) is None
    numbered = save_classifier(tmp_path / "numbered", wordpiece_tokenizer_dir, task=None, labels=("0", "1"))
    assert other_task_reason(numbered.config, None, "rte", 2, [["entailment", "not_entailment"]]) is None
    generic = save_classifier(tmp_path / "generic", wordpiece_tokenizer_dir, task=None, labels=None)
    model = SequenceClassificationModule(str(tmp_path / "generic"), **task_args("rte")).model
    assert torch.equal(model.classifier.weight, generic.classifier.weight)
    # the HF GLUE scripts' spelling
    assert recorded_task(BertConfig(finetuning_task="SST-2")) == "sst2"


def test_an_encoder_checkpoint_gets_transformers_new_head_untouched(tiny_bert_dir, caplog):
    """A masked LM has no classification head: transformers gives it a new one, nothing more to do."""
    with caplog.at_level(logging.INFO):
        model = SequenceClassificationModule(str(tiny_bert_dir), **task_args("rte")).model
    assert not [r for r in caplog.records if "new classification head" in r.getMessage()]
    assert model.config.finetuning_task == "rte"


def test_exports_record_their_task(sst2_classifier, tmp_path):
    path, _ = sst2_classifier
    module = SequenceClassificationModule(str(path), **task_args("rte"))
    module.model.save_pretrained(tmp_path / "export")  # what HFExport's save_export writes
    assert AutoConfig.from_pretrained(tmp_path / "export").finetuning_task == "rte"
    # fine-tuned again on rte: the same task, the head is kept
    again = SequenceClassificationModule(str(tmp_path / "export"), **task_args("rte"))
    assert same(head_state(again.model), head_state(module.model))


def test_distillation_teacher_of_another_task_is_refused_and_a_student_gets_a_new_head(sst2_classifier, tmp_path,
                                                                                       wordpiece_tokenizer_dir):
    path, saved = sst2_classifier
    with pytest.raises(ValueError, match=r"^model.init_args.teacher=.*: its classification head was trained on sst2, "
                                         r"not rte; give a model fine-tuned on rte$"):
        GLUEDistillationModule(teacher=str(path), **task_args("rte"))
    rte_teacher = tmp_path / "rte-teacher"
    save_classifier(rte_teacher, wordpiece_tokenizer_dir, task="rte", labels=("entailment", "not_entailment"))
    module = GLUEDistillationModule(teacher=str(rte_teacher), student=str(path), **task_args("rte"))
    assert all(not torch.equal(v, head_state(saved)[k]) for k, v in head_state(module.model).items())
    assert module.model.config.finetuning_task == "rte"
    extracted = GLUEDistillationModule(teacher=str(rte_teacher), **task_args("rte"))
    assert extracted.model.config.finetuning_task == "rte"  # the extracted student's export records the task
