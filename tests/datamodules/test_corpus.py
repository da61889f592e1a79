"""The MLM corpus pipeline (datamodules/corpus.py, datamodules/streaming.py): sources, text as it reads, the
batched-map packer against a simple reference packer, the cache, and streaming with sharding and resume."""
from __future__ import annotations

import json

import pytest

from datamodules import corpus
from datamodules.files import DataFormatError
from datamodules.corpus import iter_file_documents


def reference_blocks(documents: list[list[int]], size: int, packing: str, bos: int, eos: int, sep: int,
                     drop_last_block: bool) -> tuple[list[list[int]], list[int]]:
    """RoBERTa's packing written the obvious way, on Python lists (the definition the map-based packer must meet):
    (blocks, the document each block starts in; a separator belongs to the document after it)."""
    if packing == "full_sentences":
        stream, doc_of = [], []
        for d, doc in enumerate(documents):
            stream += ([sep] if d else []) + doc
            doc_of += [d] * ((1 if d else 0) + len(doc))
        starts = range(0, len(stream), size)
        chunks, first = [stream[i:i + size] for i in starts], [doc_of[i] for i in starts]
    else:
        pairs = [(doc[i:i + size], d) for d, doc in enumerate(documents) for i in range(0, len(doc), size)]
        chunks, first = [c for c, _ in pairs], [d for _, d in pairs]
    if drop_last_block and chunks and len(chunks[-1]) < size:
        chunks, first = chunks[:-1], first[:-1]
    return [[bos, *c, eos] for c in chunks], first


def corpus_token_lists(dm, files) -> list[list[int]]:
    docs = [d for f in files for d in iter_file_documents(dm.data_dir / f)]
    return [dm.tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]


def test_document_readers(data_dir, tmp_path):
    wiki = list(iter_file_documents(data_dir / "wikitext-2" / "train.txt"))
    assert len(wiki) == 8 and all(doc.startswith("= Article") for doc in wiki)  # sections stay inside
    assert all("\n" not in d and d == d.strip() and "  " not in d for d in wiki)  # lines joined by one space
    assert len(list(iter_file_documents(data_dir / "glue" / "SST-2" / "train.tsv"))) == 24  # each row a document
    assert len(list(iter_file_documents(data_dir / "glue" / "CoLA" / "train.tsv"))) == 24  # no header
    assert len(list(iter_file_documents(data_dir / "squad" / "dev-v1.1.json"))) == 2  # each article a document
    text = tmp_path / "plain.txt"
    text.write_text("first line \nsecond line\n\n\nanother doc  \n", encoding="utf-8")
    assert list(iter_file_documents(text)) == ["first line second line", "another doc"]  # blank-line separated
    assert list(iter_file_documents(text, text_layout="lines")) == ["first line", "second line", "another doc"]
    rows = [{"text": "a web page\n\nwith paragraphs \u2028 kept", "id": 1}, {"text": "  "}, {"text": "two"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert list(iter_file_documents(tmp_path / "c.jsonl")) == ["a web page\n\nwith paragraphs \u2028 kept", "two"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x y", None, "z"]}), tmp_path / "c.parquet")
    assert list(iter_file_documents(tmp_path / "c.parquet", text_column="body")) == ["x y", "z"]


def test_text_as_it_reads_for_a_byte_level_bpe(text_dm, tmp_path):
    """Real WikiText lines end with a space and SQuAD paragraphs follow each other: no trailing space becomes a
    lone 'Ġ' token, and the first word of a line or paragraph keeps its word-start marker."""
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" \n = Article 1 = \n \n the river lies near the city . \n the mountain . \n", encoding="utf-8")
    dm = text_dm(val_files=[str(wiki), "squad/dev-v1.1.json"], drop_last_block=False)
    for ids in corpus_token_lists(dm, [str(wiki), "squad/dev-v1.1.json"]):
        tokens = dm.tokenizer.convert_ids_to_tokens(ids) + ["(end)"]
        # a 'Ġ' is only ever the space of a word the small vocabulary splits ('Ġ', '0'), never a space of its own
        assert all(tokens[i + 1] != "(end)" and not tokens[i + 1].startswith("Ġ")
                   for i, t in enumerate(tokens) if t == "Ġ")
    dm.setup("validate")
    tokens = dm.tokenizer.convert_ids_to_tokens(dm.datasets["val"]["input_ids"][0])
    assert tokens[tokens.index("Ġ.") + 1].startswith("Ġ")  # the second line's first word: a word start
    squad = list(iter_file_documents(dm.data_dir / "squad" / "dev-v1.1.json"))
    # the second paragraph's first word keeps its word-start marker
    second = json.loads((dm.data_dir / "squad" / "dev-v1.1.json").read_text())["data"][0]["paragraphs"][1]["context"]
    first_word_ids = dm.tokenizer(" " + second.split()[0], add_special_tokens=False)["input_ids"]
    assert dm.tokenizer.convert_ids_to_tokens(first_word_ids)[0].startswith("Ġ")
    joined = dm.tokenizer(squad[0], add_special_tokens=False)["input_ids"]
    assert any(joined[i:i + len(first_word_ids)] == first_word_ids for i in range(len(joined)))


@pytest.mark.parametrize("packing", ["full_sentences", "doc_sentences"])
@pytest.mark.parametrize("drop_last_block", [False, True])
@pytest.mark.parametrize("num_proc", [1, 2])
def test_map_packer_equals_the_reference(text_dm, monkeypatch, packing, drop_last_block, num_proc):
    """Tiny map batches (a few documents each), chunks of a few batches and 2 processes: blocks cross batch,
    chunk and process boundaries."""
    monkeypatch.setattr(corpus, "BATCH_TEXT_BYTES", 300)
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 300)  # one batch per chunk
    files = ["wikitext-2/train.txt", "glue/SST-2/dev.tsv", "squad/dev-v1.1.json"]
    dm = text_dm(val_files=files, packing=packing, drop_last_block=drop_last_block, num_proc=num_proc)
    dm.setup("validate")
    data = dm.datasets["val"]
    tok = dm.tokenizer
    expected, first_doc = reference_blocks(corpus_token_lists(dm, files), 30, packing, tok.cls_token_id,
                                           tok.sep_token_id, tok.sep_token_id, drop_last_block)
    assert [list(b) for b in data["input_ids"]] == expected
    assert list(data["example_index"]) == list(range(len(expected)))
    assert list(data["document_index"]) == first_doc and max(first_doc) == 8 + 12 + 2 - 1
    assert len(data.cache_files) > 2  # several chunks
    assert data.features["input_ids"].feature.dtype == "int32"  # half the disk of int64


def test_max_samples_and_the_cache(text_dm, tmp_path):
    dm = text_dm(val_files=["wikitext-2/train.txt"], max_eval_samples=5)
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 5
    full = text_dm(val_files=["wikitext-2/train.txt"])
    full.setup("validate")
    assert [list(b) for b in full.datasets["val"]["input_ids"][:5]] == [list(b) for b in dm.datasets["val"]["input_ids"]]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and all(e.startswith("mlm-val-") for e in entries)  # no temporary folder left
    manifest = json.loads((tmp_path / "cache" / entries[0] / "litbert_cache.json").read_text())
    assert manifest["files"] == ["blocks-00000.arrow"]  # the map's own Arrow file, memory-mapped; intermediates gone
    assert sorted(p.name for p in (tmp_path / "cache" / entries[0]).iterdir()) == ["blocks-00000.arrow", "litbert_cache.json"]
    again = text_dm(val_files=["wikitext-2/train.txt"], max_eval_samples=5)
    again.build_blocks = lambda *args: pytest.fail("a cache hit must not build")
    again.setup("validate")
    assert len(again.datasets["val"]) == 5


def test_prepare_data_builds_what_setup_loads(text_dm, tmp_path):
    dm = text_dm(test_files=[])
    dm.prepare_data()  # no trainer: the fit splits
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]
    dm.build_blocks = lambda *args: pytest.fail("setup must load what prepare_data built")
    dm.setup("fit")
    assert len(dm.datasets["train"]) and len(dm.datasets["val"])


def test_jsonl_parquet_and_a_hub_dataset_folder(text_dm, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"document {i} " + " ".join(["alpha beta gamma"] * (i + 3)) for i in range(12)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in docs[:8]) + "\n")
    pq.write_table(pa.table({"content": docs[8:]}), tmp_path / "valid.parquet")
    local = text_dm(train_files=[str(tmp_path / "train.jsonl")], val_files=[str(tmp_path / "valid.parquet")],
                    text_column="content", drop_last_block=False)
    local.setup("fit")
    # a dataset folder with named configs, read by `datasets.load_dataset` exactly as a hub dataset by name
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "README.md").write_text(
        "---\nconfigs:\n- config_name: tiny\n  data_files:\n  - split: train\n    path: train.jsonl\n"
        "  - split: validation\n    path: valid.jsonl\n---\n")  # one file format per dataset
    (tmp_path / "hub" / "train.jsonl").write_bytes((tmp_path / "train.jsonl").read_bytes())
    (tmp_path / "hub" / "valid.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in docs[8:]) + "\n")
    hub = text_dm(dataset_name=str(tmp_path / "hub"), dataset_config="tiny", text_column="content",
                  test_split=None, drop_last_block=False)
    hub.setup("fit")
    for split in ("train", "val"):
        assert len(local.datasets[split]) > 1
        assert list(hub.datasets[split]["input_ids"]) == list(local.datasets[split]["input_ids"])
    with pytest.raises(DataFormatError, match=r"no text column 'text' \(set text_column\); its columns are \['content'\]"):
        text_dm(dataset_name=str(tmp_path / "hub"), dataset_config="tiny").setup("fit")
    with pytest.raises(DataFormatError, match=r"train.jsonl, line 1: expected a JSON object with the text column 'text'"):
        text_dm(train_files=[str(tmp_path / "train.jsonl")]).setup("fit")


def test_encoding_errors_name_the_line(text_dm, tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 one\n\nna\u00efve two\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin.txt, line 1: bytes b'\\xe9' cannot be decoded as utf-8 "
                                              r"\(set data.init_args.encoding if the file is not utf-8\)"):
        text_dm(val_files=[str(path)]).setup("validate")
    dm = text_dm(val_files=[str(path)], encoding="latin-1", drop_last_block=False, max_seq_length=8)
    dm.setup("validate")
    decoded = dm.tokenizer.decode([t for b in dm.datasets["val"]["input_ids"] for t in b[1:-1]])
    assert "caf\u00e9 one" in decoded and "na\u00efve two" in decoded


def test_empty_corpus_is_named(text_dm, tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataFormatError, match="empty.txt.*the val split has no documents"):
        text_dm(val_files=[str(tmp_path / "empty.txt")]).setup("validate")


# ---- streaming --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("packing", ["full_sentences", "doc_sentences"])
def test_streaming_gives_the_cached_blocks(text_dm, packing):
    kwargs = dict(train_files=["wikitext-2/train.txt", "squad/dev-v1.1.json"], packing=packing, shuffle_buffer=0,
                  drop_last_block=False)
    cached, streamed = text_dm(**kwargs), text_dm(streaming=True, **kwargs)
    cached.setup("fit")
    streamed.setup("fit")
    blocks = list(streamed.datasets["train"])
    assert [b["input_ids"] for b in blocks] == [list(b) for b in cached.datasets["train"]["input_ids"]]
    from datamodules.streaming import block_hash
    import numpy as np

    assert all(b["example_index"] == block_hash(np.asarray(b["input_ids"])) for b in blocks)
    assert len({b["example_index"] for b in blocks}) == len(blocks)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_resumes_after_the_last_block(text_dm, num_workers):
    """The training loader never ends (pass after pass, each block tagged with its pass); its state (what Lightning
    checkpoints) restarts after the last batch a training step consumed: the batches handed out minus the one
    Lightning's fetcher holds ahead."""
    import itertools

    import torch

    from datamodules.loaders import LIGHTNING_PREFETCH

    dm = text_dm(streaming=True, shuffle_buffer=0, num_workers=num_workers, batch_size=8,
                 train_files=["wikitext-2/train.txt", "wikitext-2/valid.txt"])
    dm.setup("fit")
    n_blocks = len(list(dm.datasets["train"]))
    one_pass = -(-n_blocks // 8)
    everything = list(itertools.islice(dm.train_dataloader(), one_pass + 4))  # into the second pass
    assert everything[0]["epoch"].tolist() == [0] * 8 and everything[-1]["epoch"].min() >= 1
    if num_workers == 0:  # the second pass repeats the first (no shuffle buffer); each worker has its own passes
        assert everything[-1]["epoch"].tolist() == [1] * 8
        rows = [r for b in everything for r in b["input_ids"]]
        assert all(torch.equal(rows[i], rows[i + n_blocks]) for i in range(len(rows) - n_blocks))
    loader = dm.train_dataloader()
    iterator = iter(loader)
    for _ in range(one_pass - 2):
        next(iterator)
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    expected = everything[one_pass - 2 - LIGHTNING_PREFETCH:]
    again = list(itertools.islice(resumed, len(expected)))
    assert len(expected) > 3
    for a, b in zip(again, expected):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["epoch"], b["epoch"])


def test_streamed_batches_are_masked_with_their_pass(text_dm):
    from types import SimpleNamespace

    import torch

    dm = text_dm(streaming=True, shuffle_buffer=0, train_files=["wikitext-2/train.txt"], mlm_probability=0.3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(current_epoch=0, training=True)
    mixed = dict(batch, epoch=torch.tensor([0, 1, 0, 1]))
    out = dm.on_after_batch_transfer({k: v.clone() for k, v in mixed.items()}, 0)
    assert "epoch" not in out
    for row, epoch in enumerate([0, 1, 0, 1]):
        _, labels = dm.masker(batch["input_ids"][row:row + 1], batch["attention_mask"][row:row + 1],
                              batch["example_index"][row:row + 1], epoch)
        assert torch.equal(out["labels"][row:row + 1], labels)


def test_streaming_shards_across_ranks(text_dm, data_dir):
    """Two ranks, two files: each rank streams its own file (whole shards), together the whole corpus."""
    files = ["wikitext-2/train.txt", "wikitext-2/valid.txt"]
    per_rank = []
    for rank in range(2):
        dm = text_dm(streaming=True, shuffle_buffer=0, train_files=files, packing="doc_sentences")
        dm.setup("fit")
        dm.datasets["train"].set_rank(rank, 2)
        per_rank.append([tuple(b["input_ids"]) for b in dm.datasets["train"]])
    for rank, f in enumerate(files):
        alone = text_dm(streaming=True, shuffle_buffer=0, train_files=[f], packing="doc_sentences")
        alone.setup("fit")
        assert per_rank[rank] == [tuple(b["input_ids"]) for b in alone.datasets["train"]]
    assert not set(per_rank[0]) & set(per_rank[1])


def test_streaming_shuffles_per_epoch(text_dm):
    dm = text_dm(streaming=True, shuffle_buffer=4, train_files=["wikitext-2/train.txt"], packing="doc_sentences")
    dm.setup("fit")
    stream = dm.datasets["train"]
    epochs = []
    for epoch in (0, 0, 1):
        stream.set_epoch(epoch)
        epochs.append([tuple(b["input_ids"]) for b in stream])
    assert epochs[0] == epochs[1] != epochs[2] and sorted(epochs[0]) == sorted(epochs[2])
    with pytest.raises(ValueError, match="mlm_smoothing needs the token counts"):
        text_dm(streaming=True, mlm_smoothing=0.7)
    with pytest.raises(ValueError, match="max_train_samples keeps the first N blocks"):
        text_dm(streaming=True, max_train_samples=10)


def test_streaming_resumes_through_a_lightning_checkpoint(text_dm, tiny_roberta_dir, tmp_path):
    """Lightning stores the StatefulDataLoader's state in the checkpoint: a run resumed with `ckpt_path` trains on
    the same blocks, in the same order, as the run that was never stopped."""
    import lightning.pytorch as pl
    import torch
    from transformers import AutoModelForMaskedLM

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = AutoModelForMaskedLM.from_pretrained(tiny_roberta_dir)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["example_index"].tolist())
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"]).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(max_steps, ckpt_path=None):
        dm = text_dm(tokenizer=str(tiny_roberta_dir), streaming=True, shuffle_buffer=0, max_seq_length=64,
                     train_files=["wikitext-2/train.txt", "wikitext-2/valid.txt"])
        module = Recorder()
        checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
        pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, callbacks=[checkpoints],
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(
            module, dm, ckpt_path=ckpt_path)
        return module.seen

    straight = fit(5)
    fit(2)
    resumed = fit(5, ckpt_path=str(next((tmp_path / "ckpt").glob("*step=2.ckpt"))))
    assert len(straight) == 5 and resumed == straight[2:]
