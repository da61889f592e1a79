"""TextCorpusDataModule: documents per source format, FULL-/DOC-SENTENCES packing, masking per batch."""
from types import SimpleNamespace

import pytest
import torch

from datamodules.text import TextCorpusDataModule, read_documents


@pytest.fixture
def text_dm(data_dir, bpe_tokenizer_dir, tmp_path):
    def make(**kwargs):
        kwargs.setdefault("tokenizer", str(bpe_tokenizer_dir))
        kwargs.setdefault("data_dir", str(data_dir))
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        kwargs.setdefault("max_seq_length", 32)
        kwargs.setdefault("batch_size", 4)
        return TextCorpusDataModule(**kwargs)
    return make


def _doc_token_lists(dm, files):
    """Each document's tokens, tokenized line by line as the DataModule does."""
    docs = [doc for f in files for doc in read_documents(dm.data_dir / f)]
    return [[t for line in doc for t in dm.tokenizer(line, add_special_tokens=False)["input_ids"]] for doc in docs]


def test_document_readers(data_dir):
    wiki = read_documents(data_dir / "wikitext-2" / "train.txt")
    assert len(wiki) == 8 and all(doc[0].strip().startswith("= Article") for doc in wiki)  # sections stay inside
    assert len(read_documents(data_dir / "glue" / "SST-2" / "train.tsv")) == 24  # each row a document
    assert len(read_documents(data_dir / "glue" / "CoLA" / "train.tsv")) == 24  # no header
    squad = read_documents(data_dir / "squad" / "dev-v1.1.json")
    assert len(squad) == 2 and len(squad[0]) == 2  # articles of two paragraphs


@pytest.mark.parametrize("drop_last_block", [False, True])
def test_full_sentences_packing(text_dm, drop_last_block):
    files = ["wikitext-2/valid.txt", "glue/SST-2/dev.tsv"]
    dm = text_dm(val_files=files, drop_last_block=drop_last_block)
    dm.setup("validate")
    blocks = dm.datasets["val"]["input_ids"]
    tok = dm.tokenizer
    assert all(b[0] == tok.cls_token_id == 0 and b[-1] == tok.sep_token_id == 2 for b in blocks)
    assert all(len(b) == 32 for b in blocks[:-1])  # every block full but the last
    docs = _doc_token_lists(dm, files)
    stream = [t for i, d in enumerate(docs) for t in ([tok.sep_token_id] if i else []) + d]
    content = [t for b in blocks for t in b[1:-1]]
    if drop_last_block:
        assert len(blocks[-1]) == 32 and content == stream[:len(content)] and len(stream) - len(content) < 30
    else:
        assert content == stream and len(blocks[-1]) < 32
    # 3 articles + 12 rows: the 14 separators between documents are the only separators inside blocks
    assert len(docs) == 15 and not any(tok.sep_token_id in d for d in docs)
    assert content.count(tok.sep_token_id) == (14 if not drop_last_block else stream[:len(content)].count(2))
    assert list(dm.datasets["val"]["example_index"]) == list(range(len(blocks)))


def test_doc_sentences_never_cross_documents(text_dm):
    files = ["wikitext-2/valid.txt", "squad/dev-v1.1.json"]
    dm = text_dm(val_files=files, packing="doc_sentences", drop_last_block=False)
    dm.setup("validate")
    data = dm.datasets["val"]
    docs = _doc_token_lists(dm, files)
    expected = [d[i:i + 30] for d in docs for i in range(0, len(d), 30)]
    assert [b[1:-1] for b in data["input_ids"]] == expected
    assert any(len(b) < 32 for b in data["input_ids"][:-1])  # shorter blocks at document ends
    assert sorted(set(data["document_index"])) == list(range(len(docs)))


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
        text_dm(packing="segment_pair")
