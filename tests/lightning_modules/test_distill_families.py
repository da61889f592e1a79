"""The layer-wise objectives with teachers and students of other encoder families (tiny random-init configs):
BERT, RoBERTa, DistilBERT, ELECTRA, ALBERT and DeBERTa-v2, as GLUE task distillation (each family has a
sequence-classification head), a student of another width of the teacher's family; and a clear error for a student
of another vocabulary."""
import pytest
import torch
from transformers import (AlbertConfig, AlbertForSequenceClassification, BertConfig, BertForSequenceClassification,
                          DebertaV2Config, DebertaV2ForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from lightning_modules.distill_tasks import GLUEDistillationModule
from lightning_modules.layerwise_losses import OBJECTIVES

SIZE = dict(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
FAMILIES = {
    "bert": lambda: BertForSequenceClassification(BertConfig(**SIZE)),
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**SIZE, pad_token_id=1)),
    "distilbert": lambda: DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=60, dim=32, n_layers=3, n_heads=4, hidden_dim=48, max_position_embeddings=40, dropout=0.0,
        attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=2)),
    "electra": lambda: ElectraForSequenceClassification(ElectraConfig(**SIZE, embedding_size=16)),
    "albert": lambda: AlbertForSequenceClassification(AlbertConfig(**SIZE, embedding_size=16, num_hidden_groups=1,
                                                                   classifier_dropout_prob=0.0)),
    "deberta-v2": lambda: DebertaV2ForSequenceClassification(DebertaV2Config(
        **SIZE, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=8, pooler_dropout=0.0)),
}
RELATIONS = ["hidden_mse", "value_relation_kl", "qkv_relation_kl"]  # what DeBERTa's relative attention allows


def save_teacher(tmp_path, family: str):
    torch.manual_seed(0)
    out = tmp_path / family
    FAMILIES[family]().save_pretrained(out)
    return str(out)


def glue_batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 1, 1])}


def module(teacher: str, **kwargs) -> GLUEDistillationModule:
    return GLUEDistillationModule(teacher=teacher, task_name="sst2", num_labels=2, **kwargs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_distils_into_a_narrower_student_of_its_kind(tmp_path, family):
    teacher = save_teacher(tmp_path, family)
    objectives = RELATIONS if family == "deberta-v2" else sorted(OBJECTIVES)
    m = module(teacher, student_size={"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 24},
               layerwise={name: 1.0 for name in objectives})
    assert type(m.student) is type(m.teacher) and m.student.config.hidden_size == 16
    terms = m.distillation_terms(glue_batch())
    for name in objectives:
        assert torch.isfinite(terms[name]) and terms[name] > 0, name
    terms["total"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.projections["hidden"].weight.grad is not None
    # the student is the teacher: every layer-wise term is zero
    same = module(teacher, student=teacher, layerwise={name: 1.0 for name in objectives})
    same_terms = same.distillation_terms(glue_batch())
    for name in objectives:
        assert same_terms[name].item() == pytest.approx(0.0, abs=1e-6), (family, name)


def test_score_objectives_refuse_relative_attention_and_vocabularies_must_match(tmp_path):
    teacher = save_teacher(tmp_path, "deberta-v2")
    with pytest.raises(ValueError, match="need absolute positions"):
        module(teacher, student_size={"hidden_size": 16}, layerwise={"attention_kl": 1.0})
    other_vocab = tmp_path / "other-vocab"
    BertForSequenceClassification(BertConfig(**{**SIZE, "vocab_size": 70})).save_pretrained(other_vocab)
    with pytest.raises(ValueError, match="one shared vocabulary"):
        module(save_teacher(tmp_path, "bert"), student=str(other_vocab), layerwise={"qkv_relation_kl": 1.0})


def test_general_distillation_refuses_an_unknown_lm_head_at_construction(tmp_path):
    """ELECTRA, ALBERT, DeBERTa-v2 and ModernBERT LM heads are known (test_distill_families_mlm.py); ConvBERT's is
    not."""
    from transformers import ConvBertConfig, ConvBertForMaskedLM

    from lightning_modules.distill import MaskedLMDistillationModule

    out = tmp_path / "convbert-mlm"
    ConvBertForMaskedLM(ConvBertConfig(**{**SIZE, "num_labels": 2}, embedding_size=16)).save_pretrained(out)
    with pytest.raises(TypeError, match="does not know the LM head of ConvBertForMaskedLM"):
        MaskedLMDistillationModule(teacher=str(out), vocab_size=60, pad_token_id=0)


def test_squad_distillation_with_layerwise_objectives(tmp_path):
    """QADistillationModule: the same objectives beside the span terms, into a 3-head student of another width."""
    from transformers import BertForQuestionAnswering

    from lightning_modules.distill_tasks import QADistillationModule

    torch.manual_seed(0)
    out = tmp_path / "qa-teacher"
    BertForQuestionAnswering(BertConfig(**SIZE)).save_pretrained(out)
    m = QADistillationModule(teacher=str(out), student_size={"hidden_size": 24, "num_attention_heads": 3},
                             layerwise={"hidden_mse": 1.0, "qkv_relation_kl": 1.0}, relation_heads=4)
    batch = {**glue_batch(), "start_positions": torch.tensor([2, 0, 1]), "end_positions": torch.tensor([4, 0, 3])}
    batch.pop("labels")
    terms = m.distillation_terms(batch)
    assert set(terms) == {"ce", "hard", "hidden_mse", "qkv_relation_kl", "total"}
    terms["total"].backward()
    assert m.projections["hidden"].weight.grad is not None and m.student.qa_outputs.weight.grad is not None
