"""MaskedLMModule's sentence objectives (NSP / SOP): the head's loss and gradients, the sparse path equals the dense
one, metrics logged, the export is a plain masked LM without the head, and the options must agree."""
import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForMaskedLM

from lightning_modules.mlm import MaskedLMModule
from models.convert import hf_model_from_checkpoint
from models.mlm import sparse_mlm_logits_and_first_token
from tests.datamodules.conftest import text_dm  # noqa: F401 (the DataModule factory fixture)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_seq_length=64)


@pytest.fixture
def pair_data(text_dm):
    """Factory: a set-up SEGMENT-PAIR DataModule with a sentence objective on the fixture corpus."""
    def make(objective="sop", **kwargs):
        kwargs.setdefault("max_seq_length", 64)
        dm = text_dm(packing="segment_pair", sentence_objective=objective, batch_size=8, **kwargs)
        dm.setup("fit")
        return dm

    return make


def masked_batch(dm) -> dict:
    batch = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer(batch, 0)  # masked with epoch 0 (no trainer attached)


def module_for(dm, objective="sop", **kwargs) -> MaskedLMModule:
    torch.manual_seed(0)
    return MaskedLMModule(vocab_size=dm.vocab_size, pad_token_id=dm.pad_token_id, sentence_objective=objective,
                          **{**TINY, **kwargs})


def trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("objective", ["nsp", "sop"])
def test_the_joint_loss_is_finite_and_reaches_head_and_encoder(pair_data, objective):
    dm = pair_data(objective)
    module = module_for(dm, objective)
    batch = masked_batch(dm)
    logits, targets, sentence = module.masked_and_sentence_logits(batch)
    assert sentence.shape == (batch["input_ids"].shape[0], 2) and targets.numel() > 0
    loss = torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(
        sentence, batch["sentence_label"])
    assert torch.isfinite(loss)
    loss.backward()
    head = module.sentence_head
    assert head.classifier.weight.grad.abs().sum() > 0 and head.dense.weight.grad.abs().sum() > 0
    embeddings = module.model.roberta.embeddings.word_embeddings.weight.grad
    first_layer = module.model.roberta.encoder.layer[0].attention.self.query.weight.grad
    assert embeddings.abs().sum() > 0 and first_layer.abs().sum() > 0
    # the sentence loss alone reaches the encoder too (through the first token's hidden state)
    module.zero_grad()
    torch.nn.functional.cross_entropy(module.masked_and_sentence_logits(batch)[2], batch["sentence_label"]).backward()
    assert module.model.roberta.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_sparse_first_token_equals_the_dense_forward(pair_data, wordpiece_tokenizer_dir):
    """One trimmed encoder pass gives the dense model's logits at the masked positions and its first-token state,
    for RoBERTa and for BERT (whose pairs carry token_type_ids)."""
    for dm, arch in ((pair_data(), "roberta"), (pair_data(tokenizer=str(wordpiece_tokenizer_dir)), "bert")):
        model = module_for(dm, arch=arch).model.eval()
        batch = masked_batch(dm)
        types = batch.get("token_type_ids")
        assert (types is not None) == (arch == "bert")
        logits, targets, first = sparse_mlm_logits_and_first_token(model, batch["input_ids"], batch["attention_mask"],
                                                                   batch["labels"], token_type_ids=types)
        extra = {} if types is None else {"token_type_ids": types}
        dense = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                      **extra)
        selected = batch["labels"] != -100
        torch.testing.assert_close(logits, dense.logits[selected], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(first, dense.hidden_states[-1][:, 0], atol=1e-5, rtol=1e-4)
        assert torch.equal(targets, batch["labels"][selected])


def test_bert_tokenizer_pairs_on_a_roberta_drop_the_token_types(pair_data, wordpiece_tokenizer_dir):
    dm = pair_data(tokenizer=str(wordpiece_tokenizer_dir))
    module = module_for(dm)  # RoBERTa: type_vocab_size 1, the pairs' type 1 would index past its embedding
    batch = masked_batch(dm)
    assert batch["token_type_ids"].max() == 1
    assert torch.isfinite(module.masked_and_sentence_logits(batch)[2]).all()


@pytest.mark.parametrize("sparse", [True, False])
def test_training_logs_the_sentence_metrics_and_the_export_has_no_head(pair_data, tmp_path, sparse):
    dm = pair_data("nsp", max_train_samples=16, max_eval_samples=16)
    module = module_for(dm, "nsp", sparse_prediction=sparse, warmup_steps=1, lr=1e-3)
    run = trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=2)
    run.fit(module, dm)
    logged = run.callback_metrics
    for key in ("train/loss", "train/mlm_loss", "train/sentence_loss", "train/sentence_accuracy",
                "val/loss", "val/sentence_loss", "val/sentence_accuracy"):
        assert torch.isfinite(logged[key]), key
    assert 0 <= float(logged["val/sentence_accuracy"]) <= 1
    assert module.final_metrics["val_sentence_accuracy"] == pytest.approx(float(logged["val/sentence_accuracy"]))
    # the head trains with the model: it is in the optimiser
    optimised = {id(p) for group in run.optimizers[0].param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in module.sentence_head.parameters())

    # the export (what HFExport writes: self.model) loads in AutoModelForMaskedLM and holds no sentence head
    module.model.save_pretrained(tmp_path / "export")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "export")
    assert not any("sentence" in key for key in loaded.state_dict())
    assert module.model_card_info()["recipe"]["objective"].startswith("masked language modelling + next-sentence")
    # the .ckpt keeps the head (resume), the converted model leaves it out
    run.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=False)
    assert any(key.startswith("sentence_head.") for key in checkpoint["state_dict"])
    converted = hf_model_from_checkpoint(checkpoint)
    assert not any("sentence" in key for key in converted.state_dict())
    restored = MaskedLMModule.load_from_checkpoint(tmp_path / "run.ckpt")
    torch.testing.assert_close(restored.sentence_head.classifier.weight, module.sentence_head.classifier.weight)


def test_objectives_must_agree_with_one_clear_line(pair_data, text_dm, tmp_path):
    dm = pair_data("sop")
    with pytest.raises(ValueError, match=r"^model.init_args.sentence_objective=nsp but "
                                         r"data.init_args.sentence_objective=sop: set both"):
        trainer(tmp_path, max_steps=1).fit(module_for(dm, "nsp"), dm)
    plain = text_dm(max_seq_length=64)
    plain.setup("fit")
    with pytest.raises(ValueError, match="sentence_objective=none but data.init_args.sentence_objective=sop"):
        trainer(tmp_path, max_steps=1).fit(module_for(dm, "none"), dm)
    # batches without labels (another DataModule): one line naming the data options to set
    module = module_for(plain, "sop")
    with pytest.raises(ValueError, match="needs batches with sentence_label: set data.init_args.packing"):
        module.masked_and_sentence_logits(masked_batch(plain))
    with pytest.raises(ValueError, match="sentence_objective must be"):
        module_for(plain, "both")


def test_flops_per_batch_count_the_first_token_and_the_head(pair_data):
    """ThroughputMonitor's FLOPs (models/flops.py) equal torch's FlopCounterMode with the sentence head too: the last
    layer's rows include the first token, and the head adds its two products."""
    from tests.lightning_modules.test_flops import measure_flops

    dm = pair_data("sop")
    module = module_for(dm, "sop")
    batch = masked_batch(dm)
    forward = measure_flops(module, lambda: module.masked_and_sentence_logits(batch)[2])
    assert forward == module.batch_flops(batch, "validate")
    training = measure_flops(module, lambda: module.training_step(batch, 0), loss_fn=lambda loss: loss)
    assert training == module.batch_flops(batch, "train")
