"""benchmarks/finetune_step.py: the line fit, and that its variants of the fine-tuning step compute what the shipped
step computes where they claim to, and leave the step as it was."""
import pytest
import torch

from benchmarks import finetune_step
from lightning_modules.finetune import SequenceClassificationModule
from lightning_modules.precision import native_bf16
from models.cpu_dropout import CPUDropout, use_cpu_dropout
from tests import fixtures


def test_line_fit_recovers_a_line_and_scores_the_scatter():
    xs = [1, 2, 3, 5, 8]
    intercept, slope, r2 = finetune_step.line_fit(xs, [10 + 3 * x for x in xs])
    assert intercept == pytest.approx(10) and slope == pytest.approx(3) and r2 == pytest.approx(1)
    intercept, slope, r2 = finetune_step.line_fit([1, 2, 3], [1, 3, 2])
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(1) and r2 == pytest.approx(0.25)


def make_step(model_dir, autocast: bool) -> finetune_step.Step:
    torch.manual_seed(0)  # the same new classification head for every step made
    module = SequenceClassificationModule(str(model_dir), "sst2", num_labels=2)  # dropout 0: deterministic steps
    use_cpu_dropout(module.model)
    return finetune_step.Step(module, autocast=autocast)


def make_batch(vocab_size: int, rows: int = 4, length: int = 9) -> dict:
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, 6:], mask[3, 4:] = 0, 0  # padded rows
    ids = torch.randint(5, vocab_size, (rows, length), generator=generator).masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.arange(rows) % 2}


def gradients(step: finetune_step.Step, batch: dict) -> dict:
    step.backward(batch)
    grads = {name: p.grad.clone() for name, p in step.model.named_parameters() if p.grad is not None}
    step.optimizer.zero_grad(set_to_none=True)
    return grads


# fp32 where the variant changes the arithmetic's order (in bf16 that moves the gradients by bf16 rounding)
@pytest.mark.parametrize("name, autocast", [("full_last_layer", False), ("fused_qkv", False),
                                            ("cached_bf16_weights", True), ("dense_embedding_grad", True)])
def test_exact_variants_give_the_shipped_gradients_and_restore_the_step(tiny_bert_dir, name, autocast):
    step = make_step(tiny_bert_dir, autocast)
    batch = make_batch(step.model.config.vocab_size)
    before = gradients(step, batch)
    with finetune_step.VARIANTS[name][0](step):
        during = gradients(step, batch)
    after = gradients(step, batch)
    assert during.keys() == before.keys() == after.keys() and len(before) == len(list(step.model.parameters()))
    for key in before:
        # one product for q, k and v sums in another order than three; the moved casts and torch's embedding
        # backward are the same arithmetic
        bitwise = name in ("cached_bf16_weights", "dense_embedding_grad")
        torch.testing.assert_close(during[key], before[key], rtol=0 if bitwise else 1e-4, atol=0 if bitwise else 1e-6,
                                   msg=key)
        assert torch.equal(after[key], before[key]), key
    assert step.after_backward is None and step.after_optimizer is None and step.autocast is autocast
    assert step.rows is not None and step.model.get_input_embeddings().sparse


def test_cached_bf16_weights_take_the_same_optimiser_steps_as_autocast(tiny_bert_dir):
    shipped, cached = make_step(tiny_bert_dir, autocast=True), make_step(tiny_bert_dir, autocast=True)
    batch = make_batch(shipped.model.config.vocab_size)
    with finetune_step.cached_bf16_weights(cached):
        for _ in range(3):  # from the second step on, the forward reads the copies refreshed after the last step
            shipped(batch)
            cached(batch)
        assert cached.loss(batch) == shipped.loss(batch)
    for (name, a), b in zip(shipped.model.named_parameters(), cached.model.parameters()):
        assert torch.equal(a, b), name


def test_dropout_variants_switch_the_dropouts_and_switch_them_back(tiny_bert_dir):
    step = make_step(tiny_bert_dir, autocast=False)  # the swaps do not depend on p
    dropouts = [m for m in step.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(isinstance(m, CPUDropout) for m in dropouts)
    with finetune_step.torch_dropout(step):
        inside = [m for m in step.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert len(inside) == len(dropouts) and not any(isinstance(m, CPUDropout) for m in inside)
        assert step.model.config._attn_implementation == "sdpa"
    with finetune_step.no_hidden_dropout(step):
        off = [m for m in dropouts if not m.training]
        assert len(off) == len(dropouts) - step.model.config.num_hidden_layers  # the attention's own stay on
    assert [m for m in step.model.modules() if isinstance(m, torch.nn.Dropout)] == dropouts
    assert all(m.training for m in dropouts) and step.model.config._attn_implementation != "sdpa"


def test_tiny_batch_cuts_rows_and_tokens():
    batch = make_batch(50)
    tiny = finetune_step.tiny_batch(batch)
    assert tiny["input_ids"].shape == (1, 4) and tiny["labels"].shape == (1,)
    assert torch.equal(tiny["input_ids"], batch["input_ids"][:1, :4])


@pytest.mark.skipif(not native_bf16("cpu"), reason="bf16 products go through oneDNN on a CPU with native bf16")
def test_kernels_built_counts_the_first_passs_kernels_and_none_again(tiny_bert_dir):
    step = make_step(tiny_bert_dir, autocast=True)
    batch = make_batch(step.model.config.vocab_size, rows=5, length=37)  # shapes no other test of the process uses
    built, distinct = finetune_step.kernels_built(step, [batch])
    assert built >= distinct > 0  # forward and backward products of this batch's shapes
    assert finetune_step.kernels_built(step, [batch]) == (0, 0)  # the same shapes again: all from oneDNN's cache


def test_the_script_runs_end_to_end_on_glue_yamls_data_settings(tmp_path, capsys):
    fixtures.write_glue(tmp_path, n_train=80)  # three batches of 32, 32 and 16
    finetune_step.main(["--data_dir", str(tmp_path), "--start", "0", "--steps", "2", "--repeats", "1",
                        "--tiny_steps", "1", "--variants", "fused_qkv"])
    out = capsys.readouterr().out
    assert "SST-2 batches 0..2 (batch 32" in out and "a 1 x 4 batch:" in out
    assert "| litbert | the shipped step |" in out and "| fused_qkv | tried, not kept |" in out
