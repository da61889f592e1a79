"""General (MLM) distillation module: zero soft/cosine loss for student == teacher, frozen teacher kept out of the
checkpoint, temperature resumed, vocabulary mismatches caught before training."""
import json
import shutil

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from callbacks.temperature import TemperatureAnnealing
from lightning_modules.distill import MaskedLMDistillationModule, resolve_cos_pairs
from models.student import check_shared_vocabulary


def masked_batches(tokenizer_dir, n_batches=4, batch_size=3, length=12, seed=0):
    """Random token ids with ~25% masked ([MASK] in input_ids, original id in labels) and some right padding."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(5, len(tok), (batch_size, length), generator=gen)
        attention = torch.ones_like(ids)
        attention[-1, length - 3:] = 0
        ids[attention == 0] = tok.pad_token_id
        chosen = (torch.rand(ids.shape, generator=gen) < 0.25) & attention.bool()
        chosen[0, 1] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        ids = torch.where(chosen, torch.full_like(ids, tok.mask_token_id), ids)
        batches.append({"input_ids": ids, "attention_mask": attention, "labels": labels,
                        "token_type_ids": torch.zeros_like(ids)})
    return batches


def loader(batches):
    return DataLoader(batches, batch_size=None)


def module(teacher_dir, **kwargs):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    return MaskedLMDistillationModule(teacher=str(teacher_dir), vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                      **kwargs)


@pytest.mark.parametrize("kl_positions", ["all", "masked"])
def test_soft_and_cosine_terms_vanish_when_the_student_is_the_teacher(tiny_bert_dir, kl_positions):
    batch = masked_batches(tiny_bert_dir, n_batches=1)[0]
    same = module(tiny_bert_dir, student=str(tiny_bert_dir), kl_positions=kl_positions, cos_layers=[[1, 1], [-1, -1]])
    # DistilBERT extraction keeping every layer computes the same function (token type 0 folded into positions)
    full = module(tiny_bert_dir, student_layers=[0, 1, 2, 3], kl_positions=kl_positions)
    for m in (same, full):
        terms = m.distillation_terms(batch)
        assert terms["ce"].item() == pytest.approx(0.0, abs=1e-5)
        assert terms["cos"].item() == pytest.approx(0.0, abs=1e-5)
        assert terms["mlm"].item() > 1.0  # a random model does not know the masked tokens
        assert terms["total"].item() == pytest.approx(2.0 * terms["mlm"].item(), rel=1e-4)
    assert type(full.model).__name__ == "DistilBertForMaskedLM"


def test_extracted_student_learns_from_the_teacher(tiny_bert_dir):
    batch = masked_batches(tiny_bert_dir, n_batches=1)[0]
    m = module(tiny_bert_dir)  # default "spread": layers [0, 3] of 4, the first and the last
    assert m.layer_map == [0, 3] and m.model.config.n_layers == 2
    assert m.model_card_info()["recipe"]["student_layers"] == "spread"
    terms = m.distillation_terms(batch)
    assert terms["ce"].item() > 0 and terms["cos"].item() > 0
    terms["total"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.parameters())


def test_roberta_teacher_gives_a_roberta_student(tiny_roberta_dir):
    m = module(tiny_roberta_dir, student_layers=[1, 3], cos_layers="mapped")
    assert type(m.model).__name__ == "RobertaForMaskedLM" and m.model.config.num_hidden_layers == 2
    assert m.cos_pairs == [(0, 0), (1, 2), (2, 4)]
    terms = m.distillation_terms(masked_batches(tiny_roberta_dir, n_batches=1)[0])
    assert torch.isfinite(terms["total"])


@pytest.mark.parametrize("teacher, kl_positions", [("tiny_roberta_dir", "all"), ("tiny_bert_dir", "all"),
                                                  ("tiny_bert_dir", "masked")])
def test_fused_lm_loss_computes_the_plain_terms_and_gradients(request, teacher, kl_positions):
    """`fused_lm_loss` (the default) changes how the KL and MLM terms are computed, not what: same terms, same
    gradients of every student parameter (tiny models, dropout off)."""
    teacher_dir = request.getfixturevalue(teacher)
    batch = masked_batches(teacher_dir, n_batches=1)[0]
    results = []
    for fused in (True, False):
        m = module(teacher_dir, kl_positions=kl_positions, fused_lm_loss=fused)
        assert (m.fused_head_parts() is not None) == fused  # the fused path is the one taken
        terms = m.distillation_terms(batch)
        terms["total"].backward()
        results.append((terms, {name: p.grad for name, p in m.model.named_parameters()}))
    (fused_terms, fused_grads), (plain_terms, plain_grads) = results
    for name in ("ce", "mlm", "cos", "total"):
        torch.testing.assert_close(fused_terms[name], plain_terms[name], rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in fused_grads.items():
        if grad is None or plain_grads[name] is None:
            assert grad is None and plain_grads[name] is None, name
        else:
            torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cos_layer_options():
    assert resolve_cos_pairs("last", None) == [(-1, -1)]
    assert resolve_cos_pairs([[2, 4]], None) == [(2, 4)]
    with pytest.raises(ValueError, match="mapped"):
        resolve_cos_pairs("mapped", None)
    with pytest.raises(ValueError, match="pairs"):
        resolve_cos_pairs([[1, 2, 3]], None)


class _StopAt(pl.Callback):
    """Stop the fit after optimiser step `step`, as an interrupted run (its schedules planned for max_steps)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(m, tmp_path, max_steps, batches, ckpt_path=None, stop_at=None):
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                         callbacks=[TemperatureAnnealing("linear", t_start=4.0, t_end=1.0, total=8),
                                    pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="step{step}",
                                                                 every_n_train_steps=4, save_top_k=-1),
                                    *([_StopAt(stop_at)] if stop_at else [])])
    trainer.fit(m, loader(batches), ckpt_path=ckpt_path)
    return trainer


def test_teacher_frozen_out_of_the_checkpoint_and_temperature_resumed(tiny_bert_dir, tmp_path):
    batches = masked_batches(tiny_bert_dir, n_batches=4)
    m = module(tiny_bert_dir)
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    student_before = m.model.distilbert.transformer.layer[0].ffn.lin1.weight.clone()
    fit(m, tmp_path, 8, batches + batches, stop_at=4)  # a resume keeps the plan: max_steps 8 both times
    assert not m.teacher.training and m.model.training  # .train() by Lightning left the teacher in eval mode
    assert all(torch.equal(v, teacher_before[k]) for k, v in m.teacher.state_dict().items())
    assert not torch.equal(student_before, m.model.distilbert.transformer.layer[0].ffn.lin1.weight)
    assert m.temperature == pytest.approx(4.0 - 3.0 * 3 / 7)  # value used by the 4th step (index 3)

    ckpt_path = next(tmp_path.glob("*.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["teacher"] == str(tiny_bert_dir)

    resumed = module(tiny_bert_dir)
    fit(resumed, tmp_path / "resumed", 8, batches + batches, ckpt_path=ckpt_path)
    assert resumed.temperature == pytest.approx(1.0)  # step index 7 of 8: t_end
    reloaded = MaskedLMDistillationModule.load_from_checkpoint(ckpt_path)  # rebuilds the teacher from its path
    assert torch.equal(reloaded.model.distilbert.transformer.layer[0].ffn.lin1.weight,
                       m.model.distilbert.transformer.layer[0].ffn.lin1.weight)


def test_vocabulary_mismatches_are_clear_errors(tiny_bert_dir, tiny_roberta_dir, tmp_path):
    with pytest.raises(ValueError, match="shared vocabulary"):
        module(tiny_bert_dir, student=str(tiny_roberta_dir))
    # same size, different token ids: swap two entries of the student's vocabulary
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_bert_dir, swapped)
    spec = json.loads((swapped / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (swapped / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="tokenizers of the teacher .* differ"):
        module(tiny_bert_dir, student=str(swapped))
    m = module(tiny_bert_dir)
    with pytest.raises(ValueError, match="data's tokenizer differs"):
        check_shared_vocabulary(m.teacher, m.model, str(tiny_bert_dir), None, AutoTokenizer.from_pretrained(swapped))
    with pytest.raises(ValueError, match="embeds only"):
        check_shared_vocabulary(m.teacher, m.model, str(tiny_bert_dir), None,
                                AutoTokenizer.from_pretrained(tiny_roberta_dir))


def test_bad_switches(tiny_bert_dir):
    with pytest.raises(ValueError, match="kl_positions"):
        module(tiny_bert_dir, kl_positions="some")
    with pytest.raises(ValueError, match="student_layers"):
        module(tiny_bert_dir, student=str(tiny_bert_dir), student_layers=[0])
    with pytest.raises(ValueError, match=r"^student_layers 'evenly': expected a list of teacher layer indices or one "
                                         r"of 'spread', 'every_other'$"):
        module(tiny_bert_dir, student_layers="evenly")


def test_student_layers_by_name(tiny_bert_dir):
    """`student_layers: every_other` keeps the map litbert used by default before issue 13; "spread" is the default."""
    old = module(tiny_bert_dir, student_layers="every_other")
    assert old.layer_map == [0, 2] and old.model.config.n_layers == 2
    assert old.model_card_info()["recipe"]["student_layers"] == "every_other"
    assert module(tiny_bert_dir, student_layers="spread").layer_map == [0, 3]
    teacher = old.teacher.state_dict()  # the student's top layer is the teacher's layer 2
    torch.testing.assert_close(old.model.state_dict()["distilbert.transformer.layer.1.attention.q_lin.weight"],
                               teacher["bert.encoder.layer.2.attention.self.query.weight"])
