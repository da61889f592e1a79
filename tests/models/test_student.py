"""Student extraction: weights copied from the mapped teacher layers, heads mapped, same function when all layers kept."""
import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
)

from models.student import (
    BERT_TO_DISTILBERT_LAYER,
    default_layer_map,
    extract_student,
    resolve_layer_map,
)

SIZES = dict(vocab_size=60, hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert(cls=BertForMaskedLM, **kw):
    torch.manual_seed(0)
    return cls(BertConfig(**{**SIZES, **kw})).eval()


def roberta(cls=RobertaForMaskedLM, **kw):
    torch.manual_seed(0)
    return cls(RobertaConfig(**{**SIZES, "max_position_embeddings": 42, "pad_token_id": 1, **kw})).eval()


def inputs():
    ids = torch.randint(5, SIZES["vocab_size"], (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return dict(input_ids=ids, attention_mask=mask)


def test_default_layer_map_is_the_public_spread():
    """The public DistilBERT extraction of a 12-layer teacher keeps [0, 2, 4, 7, 9, 11]: the default follows it."""
    assert default_layer_map(12) == [0, 2, 4, 7, 9, 11]
    assert default_layer_map(4) == [0, 3]
    assert default_layer_map(6) == [0, 2, 5]  # 2.5 is a half: rounded down
    assert default_layer_map(24) == [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]
    assert default_layer_map(12, 4) == [0, 4, 7, 11] and default_layer_map(12, 12) == list(range(12))
    assert resolve_layer_map(12) == resolve_layer_map(12, "spread") == [0, 2, 4, 7, 9, 11]
    assert resolve_layer_map(12, [0, 2, 4, 6, 8, 10]) == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("teacher_layers", [2, 3, 4, 5, 6, 8, 9, 12, 16, 24, 36])
def test_spread_keeps_the_first_and_last_layer(teacher_layers):
    for student_layers in range(2, teacher_layers + 1):
        layers = default_layer_map(teacher_layers, student_layers)
        assert layers[0] == 0 and layers[-1] == teacher_layers - 1
        assert len(layers) == student_layers and layers == sorted(set(layers))  # distinct, in order
    # by default half the teacher's depth (rounded up), as before
    assert len(default_layer_map(teacher_layers)) == (teacher_layers + 1) // 2


def test_every_other_is_the_old_map_by_name():
    assert resolve_layer_map(12, "every_other") == default_layer_map(12, rule="every_other") == [0, 2, 4, 6, 8, 10]
    assert resolve_layer_map(6, "every_other") == [0, 2, 4]
    assert resolve_layer_map(5, "every_other") == [0, 2, 4]
    assert resolve_layer_map(1) == [0]


@pytest.mark.parametrize("name", ["evenly", "Every-Other", ""])
def test_unknown_layer_map_name_is_one_clear_line(name):
    with pytest.raises(ValueError) as err:
        resolve_layer_map(12, name)
    message = str(err.value)
    assert "\n" not in message and "student_layers" in message and repr(name) in message
    assert "'spread'" in message and "'every_other'" in message and "list" in message


@pytest.mark.parametrize("layers, match", [([], "empty"), ([0, 6], "outside"), ([1, 1], "once")])
def test_bad_layer_lists_are_clear_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        resolve_layer_map(6, layers)


def test_bert_mlm_to_distilbert_copies_mapped_layers_embeddings_and_head():
    teacher = bert()
    student = extract_student(teacher, layers=[0, 2, 5])
    assert isinstance(student, DistilBertForMaskedLM) and student.config.n_layers == 3
    t, s = teacher.state_dict(), student.state_dict()
    for si, ti in enumerate([0, 2, 5]):
        for bert_name, distil_name in BERT_TO_DISTILBERT_LAYER.items():
            for p in ("weight", "bias"):
                assert torch.equal(s[f"distilbert.transformer.layer.{si}.{distil_name}.{p}"],
                                   t[f"bert.encoder.layer.{ti}.{bert_name}.{p}"])
    assert torch.equal(s["distilbert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    # token_type_embeddings[0] folded into the positions (DistilBERT has no token types).
    folded = t["bert.embeddings.position_embeddings.weight"] + t["bert.embeddings.token_type_embeddings.weight"][0]
    assert torch.allclose(s["distilbert.embeddings.position_embeddings.weight"], folded)
    assert torch.equal(s["distilbert.embeddings.LayerNorm.weight"], t["bert.embeddings.LayerNorm.weight"])
    assert torch.equal(s["vocab_transform.weight"], t["cls.predictions.transform.dense.weight"])
    assert torch.equal(s["vocab_layer_norm.bias"], t["cls.predictions.transform.LayerNorm.bias"])
    assert torch.equal(s["vocab_projector.bias"], t["cls.predictions.bias"])
    # The projector stays tied to the (copied) word embeddings.
    assert student.vocab_projector.weight.data_ptr() == student.distilbert.embeddings.word_embeddings.weight.data_ptr()
    # The teacher is untouched and shares no storage with the student.
    assert student.distilbert.embeddings.word_embeddings.weight.data_ptr() != \
        teacher.bert.embeddings.word_embeddings.weight.data_ptr()


def test_without_folding_positions_are_copied_verbatim():
    teacher = bert()
    student = extract_student(teacher, fold_token_type=False)
    assert torch.equal(student.distilbert.embeddings.position_embeddings.weight,
                       teacher.bert.embeddings.position_embeddings.weight)


def test_bert_to_distilbert_keeping_all_layers_is_the_same_function():
    teacher = bert()
    student = extract_student(teacher, layers=list(range(6))).eval()
    batch = inputs()
    with torch.no_grad():
        t, s = teacher(**batch), student(**batch)
    assert torch.allclose(t.logits, s.logits, atol=1e-5)


def test_bert_sequence_classification_to_distilbert_head_from_pooler():
    teacher = bert(BertForSequenceClassification, num_labels=3)
    student = extract_student(teacher)
    assert isinstance(student, DistilBertForSequenceClassification)
    assert student.config.num_labels == 3 and student.config.n_layers == 3
    assert torch.equal(student.pre_classifier.weight, teacher.bert.pooler.dense.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.distilbert.transformer.layer[1].ffn.lin2.weight,
                       teacher.bert.encoder.layer[2].output.dense.weight)
    # Same encoder function when every layer is kept (the heads differ: ReLU vs tanh, documented).
    full = extract_student(teacher, layers=list(range(6))).eval()
    batch = inputs()
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True).hidden_states[-1]
        s = full(**batch, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(t, s, atol=1e-5)


def test_bert_qa_to_distilbert():
    teacher = bert(BertForQuestionAnswering)
    student = extract_student(teacher, layers=[1, 3])
    assert torch.equal(student.qa_outputs.weight, teacher.qa_outputs.weight)


def test_minilm_sized_config_is_accepted():
    config = DistilBertConfig(dim=384, n_heads=12, hidden_dim=1536, n_layers=3, activation="gelu")
    assert config.hidden_size == 384 and config.num_attention_heads == 12


@pytest.mark.parametrize("cls", [RobertaForMaskedLM, RobertaForSequenceClassification])
def test_roberta_to_roberta_copies_mapped_layers(cls):
    teacher = roberta(cls)
    student = extract_student(teacher, layers=[1, 4])
    assert type(student) is cls and student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    for si, ti in enumerate([1, 4]):
        for key in [k for k in t if k.startswith(f"roberta.encoder.layer.{ti}.")]:
            assert torch.equal(s[key.replace(f"layer.{ti}.", f"layer.{si}.")], t[key])
    non_layer = [k for k in t if ".layer." not in k]
    assert non_layer and all(torch.equal(s[k], t[k]) for k in non_layer)
    assert not any(k.startswith("roberta.encoder.layer.2.") for k in s)


def test_random_init_has_the_same_shapes_but_fresh_weights():
    teacher = bert()
    student = extract_student(teacher, random_init=True)
    copied = extract_student(teacher)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in copied.state_dict().items()}
    assert not torch.equal(student.distilbert.transformer.layer[0].attention.q_lin.weight,
                           copied.distilbert.transformer.layer[0].attention.q_lin.weight)


def test_distilbert_for_non_bert_teacher_is_an_error():
    with pytest.raises(ValueError, match="BERT teacher"):
        extract_student(roberta(), architecture="distilbert")
