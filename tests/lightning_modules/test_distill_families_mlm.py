"""General (masked-LM) distillation and MLM training with teachers of other encoder families (tiny random-init
configs on the WordPiece fixture vocabulary): ELECTRA, ALBERT, DeBERTa-v2 (legacy and new LM head) and ModernBERT.
Per family: `split_masked_lm`'s head is the model's own logits, a few training steps of a narrower student, zero
distillation terms when the student is the teacher, an export AutoModelForMaskedLM loads; ModernBERT also as a GLUE
teacher and student."""
import pytest
import torch
from transformers import (AlbertConfig, AlbertForMaskedLM, AutoModelForMaskedLM, AutoTokenizer, DebertaV2Config,
                          DebertaV2ForMaskedLM, ElectraConfig, ElectraForMaskedLM, ModernBertConfig,
                          ModernBertForMaskedLM, ModernBertForSequenceClassification)

from lightning_modules.distill import MaskedLMDistillationModule
from lightning_modules.layerwise_losses import OBJECTIVES
from lightning_modules.mlm import MaskedLMModule
from models.mlm import IGNORE_INDEX, lm_head_parts, split_masked_lm

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MODERNBERT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=40, local_attention=4)  # 3 layers: global, sliding, sliding


def build(family: str, vocab: int, pad: int):
    """A tiny random-init masked LM of `family`."""
    if family == "electra":
        return ElectraForMaskedLM(ElectraConfig(vocab_size=vocab, pad_token_id=pad, embedding_size=16, **SIZE))
    if family == "albert":
        return AlbertForMaskedLM(AlbertConfig(vocab_size=vocab, pad_token_id=pad, embedding_size=16, **SIZE))
    if family.startswith("deberta-v2"):
        return DebertaV2ForMaskedLM(DebertaV2Config(
            vocab_size=vocab, pad_token_id=pad, relative_attention=True, pos_att_type=["p2c", "c2p"],
            max_relative_positions=8, legacy=family == "deberta-v2", **SIZE))
    config = ModernBertConfig(vocab_size=vocab, pad_token_id=pad, bos_token_id=2, eos_token_id=3, cls_token_id=2,
                              sep_token_id=3, **MODERNBERT)
    return (ModernBertForSequenceClassification if family == "modernbert-cls" else ModernBertForMaskedLM)(config)


FAMILIES = ["electra", "albert", "deberta-v2", "deberta-v2-new", "modernbert"]
ABSOLUTE = {"electra", "albert"}  # the score objectives (attention_mse, attention_kl) need absolute positions
RELATIONS = ["hidden_mse", "value_relation_kl", "qkv_relation_kl"]


def objectives(family: str) -> list[str]:
    return sorted(OBJECTIVES) if family in ABSOLUTE else RELATIONS


@pytest.fixture
def tokenizer(wordpiece_tokenizer_dir):
    return AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)


def save_teacher(tmp_path, tokenizer, family: str) -> str:
    torch.manual_seed(0)
    out = tmp_path / family
    build(family, len(tokenizer), tokenizer.pad_token_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def mlm_batch(vocab: int) -> dict:
    """3 rows of 10 tokens, the last padded from 7; a few masked positions per row."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, cols in enumerate(([1, 4], [2, 3, 8], [5])):
        labels[row, cols] = ids[row, cols]
        ids[row, cols] = 4  # [MASK]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


def distiller(teacher: str, tokenizer, **kwargs) -> MaskedLMDistillationModule:
    return MaskedLMDistillationModule(teacher=teacher, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_split_head_is_the_models_logits(tokenizer, family):
    torch.manual_seed(0)
    model = build(family, len(tokenizer), tokenizer.pad_token_id).eval()
    batch = mlm_batch(len(tokenizer))
    encoder, head = split_masked_lm(model)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        torch.testing.assert_close(head(hidden), logits)
        transform, projection = lm_head_parts(head)  # the fused KL/MLM loss's pieces
        torch.testing.assert_close(projection(transform(hidden)), logits)
    assert projection.weight.shape[0] == len(tokenizer)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlm_training_module_sparse_loss_is_the_dense_loss(tmp_path, tokenizer, family):
    """MaskedLMModule (sparse prediction: the head at the masked positions only) on a teacher of each family."""
    module = MaskedLMModule(pretrained=save_teacher(tmp_path, tokenizer, family), vocab_size=len(tokenizer),
                            pad_token_id=tokenizer.pad_token_id).eval()
    batch = mlm_batch(len(tokenizer))
    with torch.no_grad():
        logits, targets = module.masked_logits(batch)
        dense = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, targets), dense)


@pytest.mark.parametrize("family", FAMILIES)
def test_general_distillation_into_a_narrower_student_trains_and_exports(tmp_path, tokenizer, family):
    teacher = save_teacher(tmp_path, tokenizer, family)
    names = objectives(family)
    m = distiller(teacher, tokenizer, alpha_cos=0.0, layerwise={name: 1.0 for name in names},
                  student_size={"hidden_size": 16, "num_attention_heads": 4, "intermediate_size": 24})
    assert type(m.student) is type(m.teacher) and m.student.config.hidden_size == 16
    assert m.fused_head_parts() is not None  # both heads known to lm_head_parts: the fused KL + MLM loss
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in m.student.state_dict().items()}
    optimizer = torch.optim.AdamW(list(m.model.parameters()) + list(m.projections.parameters()), lr=1e-3)
    batch = mlm_batch(len(tokenizer))
    for _ in range(3):
        terms = m.distillation_terms(batch)
        assert set(terms) == {"ce", "mlm", "total", *names}
        for name, value in terms.items():
            assert torch.isfinite(value), (family, name)
        optimizer.zero_grad()
        terms["total"].backward()
        assert all(p.grad is None for p in m.teacher.parameters())
        optimizer.step()
    assert all(torch.equal(v, teacher_before[k]) for k, v in m.teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in m.student.state_dict().items())
    out = tmp_path / "export"
    m.student.save_pretrained(out)  # what callbacks/hf_export.py writes (with the tokenizer and a card)
    loaded = AutoModelForMaskedLM.from_pretrained(out).eval()
    assert type(loaded) is type(m.student)
    m.student.eval()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        torch.testing.assert_close(loaded(**inputs).logits, m.student(**inputs).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_that_is_the_teacher_has_zero_distillation_terms(tmp_path, tokenizer, family):
    teacher = save_teacher(tmp_path, tokenizer, family)
    names = objectives(family)
    same = distiller(teacher, tokenizer, student=teacher, layerwise={name: 1.0 for name in names}).eval()
    terms = same.distillation_terms(mlm_batch(len(tokenizer)))
    for name in ["ce", "cos", *names]:
        assert terms[name].item() == pytest.approx(0.0, abs=1e-5), (family, name)
    assert terms["mlm"] > 0  # the gold tokens' cross-entropy: not a teacher-student difference


@pytest.mark.parametrize("family", FAMILIES)
def test_a_shallower_student_copies_teacher_layers_and_reloads(tmp_path, tokenizer, family):
    """The default student (half the layers, copied) of each family; ModernBERT's layer_types follow the layers."""
    teacher = save_teacher(tmp_path, tokenizer, family)
    m = distiller(teacher, tokenizer)
    expected = [0, 2] if family == "modernbert" else [0]  # "spread" over 3 or 2 teacher layers
    assert m.layer_map == expected and m.student.config.num_hidden_layers == len(expected)
    terms = m.distillation_terms(mlm_batch(len(tokenizer)))
    assert torch.isfinite(terms["total"])
    m.student.save_pretrained(tmp_path / "export")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "export")
    assert loaded.config.num_hidden_layers == len(expected)
    if family == "modernbert":
        assert loaded.config.layer_types == ["full_attention", "sliding_attention"]


def test_modernbert_students_keep_its_layer_pattern_and_layer_0(tmp_path, tokenizer):
    teacher = save_teacher(tmp_path, tokenizer, "modernbert")
    m = distiller(teacher, tokenizer, student_layers=[0, 2])
    assert m.student.config.layer_types == ["full_attention", "sliding_attention"]
    # copied layers compute what they computed in the teacher: layer 0's output is the teacher's
    batch = mlm_batch(len(tokenizer))
    with torch.no_grad():
        s = m.encode(m.student.eval(), batch, True)[1][1]
        t = m.encode(m.teacher, batch, True)[1][1]
    torch.testing.assert_close(s, t)
    with pytest.raises(ValueError, match="first layer must copy the teacher's layer 0"):
        distiller(teacher, tokenizer, student_layers=[1, 2])
    deeper = distiller(teacher, tokenizer, alpha_cos=0.0, student_size={"num_hidden_layers": 4, "hidden_size": 16})
    assert deeper.student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention",
                                                 "full_attention"]


@pytest.mark.parametrize("family", ["deberta-v2", "modernbert"])
def test_score_objectives_name_what_relative_positions_allow(tmp_path, tokenizer, family):
    teacher = save_teacher(tmp_path, tokenizer, family)
    with pytest.raises(ValueError, match="need absolute positions.*qkv_relation_kl"):
        distiller(teacher, tokenizer, layerwise={"attention_mse": 1.0})


def test_modernbert_glue_teacher_and_student(tmp_path, tokenizer):
    """Task distillation: ModernBERT's sequence-classification model as teacher and (narrower) student."""
    from lightning_modules.distill_tasks import GLUEDistillationModule

    teacher = save_teacher(tmp_path, tokenizer, "modernbert-cls")
    batch = mlm_batch(len(tokenizer))
    batch["labels"] = torch.tensor([0, 1, 1])
    m = GLUEDistillationModule(teacher=teacher, task_name="sst2", num_labels=2,
                               student_size={"hidden_size": 16, "intermediate_size": 24},
                               layerwise={name: 1.0 for name in RELATIONS})
    terms = m.distillation_terms(batch)
    assert all(torch.isfinite(terms[name]) and terms[name] > 0 for name in RELATIONS)
    terms["total"].backward()
    assert m.student.classifier.weight.grad is not None
    same = GLUEDistillationModule(teacher=teacher, task_name="sst2", num_labels=2, student=teacher,
                                  layerwise={name: 1.0 for name in RELATIONS})
    same_terms = same.distillation_terms(batch)
    for name in ["ce", *RELATIONS]:
        assert same_terms[name].item() == pytest.approx(0.0, abs=1e-5), name


def test_minilmv2_general_config_with_a_modernbert_teacher(tmp_path, data_dir, tokenizer, monkeypatch):
    """configs/distill/minilmv2_general.yaml through train.py: the fixture corpus, a narrower ModernBERT student,
    exported by HFExport and loaded back with AutoModelForMaskedLM."""
    from pathlib import Path

    import train

    monkeypatch.chdir(tmp_path)
    teacher = save_teacher(tmp_path, tokenizer, "modernbert")
    config = Path(__file__).resolve().parents[2] / "configs" / "distill" / "minilmv2_general.yaml"
    cli = train.main(args=[
        "fit", "--config", str(config), f"--model.init_args.teacher={teacher}", f"--data.init_args.tokenizer={teacher}",
        f"--data.init_args.data_dir={data_dir}", "--data.init_args.max_seq_length=32",
        "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
        "--model.init_args.student_size={num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 4, "
        "intermediate_size: 24}", "--model.init_args.relation_heads=4",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'export'}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ])
    assert type(cli.model.student).__name__ == "ModernBertForMaskedLM"
    assert "train/loss_qkv_relation_kl" in cli.trainer.logged_metrics
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "export" / "last")
    assert type(exported).__name__ == "ModernBertForMaskedLM" and exported.config.hidden_size == 16
    assert exported.config.layer_types == ["full_attention", "sliding_attention"]


def test_a_student_of_another_family_needs_the_teachers_vocabulary(tmp_path, tokenizer, bpe_tokenizer_dir):
    """A student directory of another family distils when it shares the teacher's tokenizer (the KL compares the
    same token ids); another vocabulary is refused before training."""
    teacher = save_teacher(tmp_path, tokenizer, "modernbert")
    student = save_teacher(tmp_path, tokenizer, "electra")
    m = distiller(teacher, tokenizer, student=student, alpha_cos=0.0, layerwise={"qkv_relation_kl": 1.0})
    assert torch.isfinite(m.distillation_terms(mlm_batch(len(tokenizer)))["total"])
    bpe = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    other = save_teacher(tmp_path / "bpe", bpe, "electra")
    with pytest.raises(ValueError, match="one shared vocabulary"):
        distiller(teacher, tokenizer, student=other, alpha_cos=0.0)


def test_mlm_training_refuses_an_unknown_head_in_one_line_unless_dense(tmp_path, tokenizer):
    """ConvBERT's LM head is not one `split_masked_lm` knows: sparse prediction is refused at construction (one line
    naming the way out), the dense path runs the model's own head."""
    from transformers import ConvBertConfig, ConvBertForMaskedLM

    out = tmp_path / "convbert"
    ConvBertForMaskedLM(ConvBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                       embedding_size=16, **SIZE)).save_pretrained(out)
    kwargs = dict(pretrained=str(out), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(TypeError, match=r"^sparse MLM does not know the LM head of ConvBertForMaskedLM.*"
                                        r"sparse_prediction=false runs the model's own head$") as error:
        MaskedLMModule(**kwargs)
    assert "\n" not in str(error.value)
    logits, targets = MaskedLMModule(**kwargs, sparse_prediction=False).masked_logits(mlm_batch(len(tokenizer)))
    assert logits.shape == (targets.numel(), len(tokenizer))


def test_an_embedding_width_equal_to_the_hidden_size_follows_it(tmp_path, tokenizer):
    """ELECTRA/ALBERT factorise the embeddings (embedding_size); a teacher without the factorisation gives a narrower
    student without it, a factorised teacher keeps its embedding width."""
    torch.manual_seed(0)
    out = tmp_path / "electra-unfactorised"
    ElectraForMaskedLM(ElectraConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, embedding_size=32,
                                     **SIZE)).save_pretrained(out)
    narrow = {"hidden_size": 16, "intermediate_size": 24}
    student = distiller(str(out), tokenizer, alpha_cos=0.0, student_size=narrow).student
    assert student.config.embedding_size == 16 and not hasattr(student.electra, "embeddings_project")
    factorised = distiller(save_teacher(tmp_path, tokenizer, "albert"), tokenizer, alpha_cos=0.0,
                           student_size={"hidden_size": 24, "intermediate_size": 24})
    assert factorised.student.config.hidden_size == 24 and factorised.student.config.embedding_size == 16
