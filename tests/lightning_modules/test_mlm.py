"""MaskedLMModule: parameter groups and schedule, the loss falls on real steps, metrics, checkpoints, clear errors."""
import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.masking import MLMMasker
from lightning_modules.mlm import MaskedLMModule, non_pad_tokens
from models.pretrained import load_tokenizer

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_seq_length=32)


class FixtureBlocks(pl.LightningDataModule):
    """Fixture text cut into blocks of 32 tokens, masked per batch by MLMMasker (a stand-in for the text DataModule,
    so these tests exercise the module alone)."""

    def __init__(self, tokenizer_dir, text_file, max_seq_length=32, batch_size=8):
        super().__init__()
        self.tokenizer = load_tokenizer(str(tokenizer_dir))
        self.vocab_size, self.pad_token_id, self.max_seq_length = len(self.tokenizer), self.tokenizer.pad_token_id, \
            max_seq_length
        ids = self.tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]
        body = max_seq_length - 2
        self.blocks = [[self.tokenizer.cls_token_id] + ids[i:i + body] + [self.tokenizer.sep_token_id]
                       for i in range(0, len(ids) - body, body)]
        self.masker = MLMMasker(self.tokenizer, seed=0)
        self.batch_size = batch_size

    def _loader(self, shuffle):
        def collate(rows):
            index, blocks = zip(*rows)
            return {"input_ids": torch.tensor(blocks), "attention_mask": torch.ones(len(blocks), len(blocks[0]),
                                                                                    dtype=torch.long),
                    "example_index": torch.tensor(index)}
        return DataLoader(list(enumerate(self.blocks)), batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate)

    def train_dataloader(self):
        return self._loader(True)

    def val_dataloader(self):
        return self._loader(False)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        epoch = self.trainer.current_epoch if self.trainer.training else 0
        batch["input_ids"], batch["labels"] = self.masker(batch["input_ids"], batch["attention_mask"],
                                                          batch["example_index"], epoch)
        return batch


@pytest.fixture
def blocks(bpe_tokenizer_dir, data_dir):
    return FixtureBlocks(bpe_tokenizer_dir, data_dir / "wikitext-2" / "train.txt")


def trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    return pl.Trainer(**{**defaults, **kwargs})


class RecordLearningRates(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_parameter_groups_and_schedule(tmp_path, blocks):
    module = MaskedLMModule(vocab_size=blocks.vocab_size, pad_token_id=blocks.pad_token_id, warmup_steps=3, lr=1e-3,
                            **TINY)
    record = RecordLearningRates()
    trainer(tmp_path, max_steps=10, limit_val_batches=0, callbacks=[record]).fit(module, datamodule=blocks)
    optimizer = module.trainer.optimizers[0]
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n for n in no_decay_names)
    assert "lm_head.layer_norm.weight" in no_decay_names
    assert "roberta.embeddings.LayerNorm.weight" in no_decay_names
    assert "roberta.encoder.layer.0.attention.self.query.weight" in {names[id(p)] for p in decay["params"]}
    lrs = record.lrs  # per optimiser step: warmup 0 -> peak at step 3, then linear decay to 0 at step 10
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-3 / 7)


def test_loss_falls_and_validation_metrics_are_logged(tmp_path, blocks):
    torch.manual_seed(0)
    module = MaskedLMModule(vocab_size=blocks.vocab_size, pad_token_id=blocks.pad_token_id, lr=3e-3, warmup_steps=3,
                            **TINY)
    t = trainer(tmp_path, max_steps=30, limit_val_batches=4, val_check_interval=30, check_val_every_n_epoch=None)
    before = t.validate(module, datamodule=blocks, verbose=False)[0]
    t.fit(module, datamodule=blocks)
    after = module.final_metrics
    assert set(before) == {"val/loss", "val/perplexity", "val/accuracy"}
    # Perplexity is exp(mean cross-entropy) over the same masked tokens.
    assert before["val/perplexity"] == pytest.approx(torch.tensor(before["val/loss"]).exp().item(), rel=1e-4)
    assert after["val_perplexity"] < 0.7 * before["val/perplexity"]
    # Masked-token accuracy is the share of argmax hits over every masked token of the validation batches seen.
    module.eval()
    hits = total = 0
    with torch.no_grad():
        for i, batch in zip(range(4), blocks.val_dataloader()):
            batch["input_ids"], batch["labels"] = blocks.masker(batch["input_ids"], batch["attention_mask"],
                                                                batch["example_index"], 0)
            logits, targets = module.masked_logits(batch)
            hits, total = hits + (logits.argmax(-1) == targets).sum().item(), total + targets.numel()
    assert after["val_accuracy"] == pytest.approx(hits / total)


def test_sparse_and_dense_training_steps_agree(blocks):
    torch.manual_seed(0)
    sparse = MaskedLMModule(vocab_size=blocks.vocab_size, pad_token_id=blocks.pad_token_id, **TINY)
    dense = MaskedLMModule(vocab_size=blocks.vocab_size, pad_token_id=blocks.pad_token_id, sparse_prediction=False,
                           **TINY)
    dense.load_state_dict(sparse.state_dict())
    batch = next(iter(blocks.val_dataloader()))
    batch["input_ids"], batch["labels"] = blocks.masker(batch["input_ids"], batch["attention_mask"],
                                                        batch["example_index"], 0)
    for module in (sparse, dense):
        module.log = lambda *args, **kwargs: None
    torch.testing.assert_close(sparse.training_step(batch, 0), dense.training_step(batch, 0))
    assert non_pad_tokens(batch) == batch["input_ids"].numel()


def test_checkpoint_resume_and_hf_metadata(tmp_path, blocks):
    module = MaskedLMModule(vocab_size=blocks.vocab_size, pad_token_id=blocks.pad_token_id, warmup_steps=1, **TINY)
    stop_at_3 = pl.callbacks.LambdaCallback(  # an interrupted run: the resume keeps its schedule plan (max_steps 5)
        on_train_batch_end=lambda trainer, *args: setattr(trainer, "should_stop", trainer.global_step >= 3))
    t = trainer(tmp_path, max_steps=5, limit_val_batches=1, val_check_interval=3, check_val_every_n_epoch=None,
                callbacks=[stop_at_3])
    t.fit(module, datamodule=blocks)
    assert t.global_step == 3
    path = tmp_path / "mlm.ckpt"
    t.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["hf_model"]["model_class"] == "RobertaForMaskedLM"
    assert checkpoint["hf_model"]["model_card_info"]["task"] == "masked language modelling"
    resumed = MaskedLMModule(vocab_size=blocks.vocab_size, pad_token_id=blocks.pad_token_id, warmup_steps=1, **TINY)
    t2 = trainer(tmp_path, max_steps=5, limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None)
    t2.fit(resumed, datamodule=blocks, ckpt_path=path)
    assert t2.global_step == 5  # continued from step 3, not from 0


def test_pretrained_bert_directory_trains(tmp_path, tiny_bert_dir, data_dir):
    data = FixtureBlocks(tiny_bert_dir, data_dir / "wikitext-2" / "train.txt")
    module = MaskedLMModule(vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, pretrained=str(tiny_bert_dir),
                            warmup_steps=0)
    assert type(module.model).__name__ == "BertForMaskedLM"
    trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None).fit(module, datamodule=data)
    assert module.final_metrics["val_loss"] > 0


def test_too_long_data_is_a_clear_error(tmp_path, bpe_tokenizer_dir, data_dir):
    data = FixtureBlocks(bpe_tokenizer_dir, data_dir / "wikitext-2" / "train.txt", max_seq_length=64)
    module = MaskedLMModule(vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, **TINY)
    with pytest.raises(ValueError, match="max_seq_length=64"):
        trainer(tmp_path, max_steps=1).fit(module, datamodule=data)


@pytest.fixture
def bert_with_dropout_dir(tmp_path, wordpiece_tokenizer_dir):
    """A tiny saved BERT masked LM with dropout 0.1 (what `pretrained=DIR` continues from)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tok = load_tokenizer(str(wordpiece_tokenizer_dir))
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    out = tmp_path / "bert-dropout"
    BertForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class RecordTrainingMode(pl.Callback):
    """At each training batch: whether the model and all its dropout modules train, and whether two forward passes
    on the batch differ (they do only with dropout on)."""

    def __init__(self):
        self.modes, self.passes_differ = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        dropouts = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
        self.modes.append((module.model.training, bool(dropouts) and all(m.training for m in dropouts)))
        with torch.no_grad():
            first, second = module.masked_logits(batch)[0], module.masked_logits(batch)[0]
        self.passes_differ.append(not torch.equal(first, second))


def test_pretrained_directory_trains_in_train_mode(tmp_path, bert_with_dropout_dir, data_dir):
    """from_pretrained returns eval mode and Lightning keeps sub-module modes: continued pretraining must still train
    with dropout on (issue 13)."""
    data = FixtureBlocks(bert_with_dropout_dir, data_dir / "wikitext-2" / "train.txt")
    module = MaskedLMModule(vocab_size=data.vocab_size, pad_token_id=data.pad_token_id,
                            pretrained=str(bert_with_dropout_dir), warmup_steps=0)
    record = RecordTrainingMode()
    trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[record]).fit(module, datamodule=data)
    assert record.modes == [(True, True)] * 2
    assert record.passes_differ == [True] * 2
