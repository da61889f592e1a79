"""Streaming MLM blocks: `datasets` streaming (litbert's `streaming: true`) against LitData, measured side by side.

    pip install obstore boto3 tifffile && pip install --no-deps litdata==0.2.76   # optional (its torchvision
    #   requirement would replace the pinned torch); not a litbert dependency
    DATA_DIR=../shared/data python benchmarks/streaming_readers.py --tokenizer artifacts/tokenizers/wikitext2-bpe

The corpus is WikiText-2 train copied into `--files` files (the shards). Both readers produce 128-token
FULL-SENTENCES-style blocks of the same tokenizer, one process, no DataLoader workers. Reported for each:
- preparation: LitData needs `litdata.optimize` to tokenize the whole corpus into chunks first (time, disk);
  `datasets` streaming reads the raw files (or hub files) directly and tokenizes on the fly;
- the time to read every block once (blocks/s), with `--repeat` alternating runs, best of;
- resume: a loader restored from the state saved halfway, time to its first batch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = 128


def litbert_loader(files, tokenizer, state=None):
    from datamodules.streaming import StreamingBlocks
    from datamodules.text import TextCorpusDataModule

    dm = TextCorpusDataModule(tokenizer=tokenizer, train_files=[str(f) for f in files], val_files=[], test_files=[],
                              data_dir="/", streaming=True, shuffle_buffer=0, max_seq_length=BLOCK, batch_size=32)
    dm.datasets["train"] = StreamingBlocks(dm, dm.sources("train"))
    loader = dm.train_dataloader()
    if state is not None:
        loader.load_state_dict(state)
    return loader


def tokenize_file(path, tokenizer_dir):
    """LitData `optimize` body: the token ids of one file's documents, separator-joined (FULL-SENTENCES)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from datamodules.corpus import iter_file_documents

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for document in iter_file_documents(Path(path)):
        ids = tok(document, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        yield torch.tensor(np.asarray(ids, dtype=np.int32))


def litdata_prepare(files, tokenizer, out_dir):
    from functools import partial

    from litdata import TokensLoader, optimize

    optimize(fn=partial(tokenize_file, tokenizer_dir=tokenizer), inputs=[str(f) for f in files], output_dir=out_dir,
             chunk_bytes="64MB", item_loader=TokensLoader(), num_workers=min(len(files), os.cpu_count() or 1),
             mode="overwrite")  # LitData at its best here: one optimize worker per core


def litdata_loader(out_dir, state=None):
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    dataset = StreamingDataset(out_dir, item_loader=TokensLoader(block_size=BLOCK - 2), shuffle=False)
    loader = StreamingDataLoader(dataset, batch_size=32, num_workers=0)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def read_all(make_loader, n_batches: int | None) -> tuple[float, int, dict]:
    """(seconds, batches, the loader's state halfway) for one pass: the LitData loader ends by itself, litbert's
    training loader never ends (it starts the next pass), so it reads as many batches as LitData's pass had."""
    import itertools

    loader = make_loader(None)
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(loader, n_batches))
    seconds = time.perf_counter() - start
    loader = make_loader(None)
    for i, _ in enumerate(loader):
        if i + 1 == n // 2:
            return seconds, n, loader.state_dict()
    raise RuntimeError("the loader ended before half its batches")


def time_to_first_batch(make_loader, state) -> float:
    start = time.perf_counter()
    next(iter(make_loader(state)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="artifacts/tokenizers/wikitext2-bpe")
    parser.add_argument("--files", type=int, default=4, help="copies of WikiText-2 train, one shard each")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    source = Path(os.environ.get("DATA_DIR", "data")) / "wikitext-2" / "train.txt"
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.files):
            files.append(Path(tmp) / f"shard{i}.txt")
            shutil.copyfile(source, files[-1])
        out_dir = str(Path(tmp) / "litdata")
        start = time.perf_counter()
        litdata_prepare(files, args.tokenizer, out_dir)
        prep = time.perf_counter() - start
        disk = sum(p.stat().st_size for p in Path(out_dir).rglob("*") if p.is_file())
        readers = {"LitData StreamingDataset": lambda s: litdata_loader(out_dir, s),
                   "datasets streaming (litbert)": lambda s: litbert_loader(files, args.tokenizer, s)}
        best = {name: None for name in readers}
        n_batches = None
        for _ in range(args.repeat):  # alternate the two
            for name, make in readers.items():
                seconds, n, half = read_all(make, n_batches)
                n_batches = n
                resume = time_to_first_batch(make, half)
                if best[name] is None or seconds < best[name][0]:
                    best[name] = (seconds, n, resume)
        corpus_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"corpus: {args.files} files, {corpus_mb:.1f} MB; LitData optimize: {prep:.1f} s, "
              f"{disk / 1e6:.1f} MB of chunks; datasets streaming: no preparation, no extra disk")
        for name, (seconds, n, resume) in best.items():
            print(f"{name:32s} {n * 32 / seconds:9.0f} blocks/s  ({n} batches of 32 in {seconds:.1f} s)  "
                  f"resume halfway -> first batch {resume:.2f} s")


if __name__ == "__main__":
    main()
