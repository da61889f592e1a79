"""TextCorpusDataModule: masking per batch, the Trainer, bad sources (the corpus pipeline: tests/datamodules/test_corpus.py)."""
from types import SimpleNamespace

import pytest
import torch

from datamodules.text import TextCorpusDataModule


def test_masking_in_on_after_batch_transfer(text_dm):
    dm = text_dm(val_files=["wikitext-2/train.txt"], mlm_probability=0.3)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    original = batch["input_ids"].clone()
    masked = dm.on_after_batch_transfer(dict(batch, input_ids=original.clone()), 0)
    selected = masked["labels"] != -100
    assert selected.any() and (masked["labels"][selected] == original[selected]).all()
    assert (masked["input_ids"][~selected] == original[~selected]).all()
    assert (masked["input_ids"][selected] == dm.tokenizer.mask_token_id).any()
    # epoch: trainer.current_epoch while training (dynamic: a new mask), 0 otherwise
    dm.trainer = SimpleNamespace(current_epoch=1, training=True)
    epoch1 = dm.on_after_batch_transfer(dict(batch, input_ids=original.clone()), 0)
    assert not torch.equal(epoch1["labels"], masked["labels"])
    dm.trainer = SimpleNamespace(current_epoch=1, training=False)
    val = dm.on_after_batch_transfer(dict(batch, input_ids=original.clone()), 0)
    assert torch.equal(val["labels"], masked["labels"])
    # a batch that already has labels, and mask=False, are left alone
    done = dm.on_after_batch_transfer(dict(batch, labels=batch["input_ids"]), 0)
    assert torch.equal(done["input_ids"], original)
    plain = text_dm(val_files=["wikitext-2/train.txt"], mask=False)
    plain.setup("validate")
    assert "labels" not in plain.on_after_batch_transfer(dict(batch), 0) and plain.masker is None


def test_static_masking_and_smoothing_build_the_masker(text_dm):
    dm = text_dm(masking="static", static_duplicates=1, mlm_smoothing=0.7, whole_word_mask=True)
    dm.setup("validate")  # smoothing needs the train split's token counts even to validate
    assert "train" in dm.datasets and dm.masker.static_duplicates == 1 and dm.masker.whole_word_mask
    counts = dm.token_counts()
    assert counts.sum() == sum(len(b) for b in dm.datasets["train"]["input_ids"])
    batch = next(iter(dm.val_dataloader()))
    dm.trainer = SimpleNamespace(current_epoch=0, training=True)
    a = dm.on_after_batch_transfer(dict(batch, input_ids=batch["input_ids"].clone()), 0)
    dm.trainer = SimpleNamespace(current_epoch=3, training=True)
    b = dm.on_after_batch_transfer(dict(batch, input_ids=batch["input_ids"].clone()), 0)
    assert torch.equal(a["labels"], b["labels"])  # one static mask, reused every epoch


def test_trainer_one_step_on_a_tiny_roberta(text_dm, tiny_roberta_dir):
    """Lightning calls on_after_batch_transfer: the module receives masked batches with labels."""
    import lightning.pytorch as pl
    from transformers import AutoModelForMaskedLM

    class TinyMLM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = AutoModelForMaskedLM.from_pretrained(tiny_roberta_dir)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(sorted(batch))
            return self.model(**{k: v for k, v in batch.items() if k != "example_index"}).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = text_dm(tokenizer=str(tiny_roberta_dir), max_seq_length=64, max_train_samples=8)
    module = TinyMLM()
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(module, dm)
    assert module.seen == [["attention_mask", "example_index", "input_ids", "labels"]]


def test_bad_sources(text_dm, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        text_dm(val_files=["nothere.txt"]).setup("validate")
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(ValueError, match="not a GLUE task folder"):
        text_dm(val_files=[str(tmp_path / "x.tsv")]).setup("validate")
    with pytest.raises(ValueError, match="packing must be"):
        text_dm(packing="sentences")
