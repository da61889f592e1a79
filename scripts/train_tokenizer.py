"""Train a RoBERTa-style byte-level BPE tokenizer on text files and save a directory AutoTokenizer loads.

    python scripts/train_tokenizer.py --files wikitext-2/train.txt --vocab_size 50265 --out artifacts/tokenizers/wikitext2-bpe

Relative --files are looked up as given first, then under $DATA_DIR (or --data_dir). Any text file works: every
non-blank line is training text (`.json` SQuAD files give their contexts, GLUE `.tsv` files their sentences).
The output directory is written under a temporary name and renamed (atomic).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.base import resolve_data_dir  # noqa: E402
from datamodules.tokenizer import train_byte_level_bpe  # noqa: E402


def resolve_input(name: str, data_dir: Path) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (data_dir / path).is_file():
        return data_dir / path
    raise SystemExit(f"error: training file {name!r} not found (looked in the current folder and {data_dir})")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", nargs="+", required=True, help="text files (relative to DATA_DIR allowed)")
    parser.add_argument("--vocab_size", type=int, default=50265, help="RoBERTa: 50265 (50k BPE units + specials)")
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--model_max_length", type=int, default=512)
    parser.add_argument("--data_dir", default=None, help="default: $DATA_DIR, else ./data")
    parser.add_argument("--out", required=True, help="output tokenizer directory")
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error(f"--vocab_size {args.vocab_size} is too small: the 256 byte symbols and 5 specials come first")
    data_dir = resolve_data_dir(args.data_dir)
    files = [resolve_input(f, data_dir) for f in args.files]
    with tempfile.TemporaryDirectory() as tmp:
        text_files = [as_text_file(f, Path(tmp) / f"{i}.txt") for i, f in enumerate(files)]
        tokenizer = train_byte_level_bpe(text_files, args.out, vocab_size=args.vocab_size,
                                         min_frequency=args.min_frequency, model_max_length=args.model_max_length)
    print(f"saved a byte-level BPE of {len(tokenizer)} tokens to {args.out} (trained on {[str(f) for f in files]})")
    return Path(args.out)


def as_text_file(path: Path, tmp: Path) -> Path:
    """Plain text files as they are; SQuAD JSON / GLUE TSV / JSON lines / Parquet through the corpus readers, one
    document per line, written as they are read (memory: one document)."""
    if path.suffix.lower() not in (".json", ".tsv", ".jsonl", ".parquet"):
        return path
    from datamodules.corpus import iter_file_documents

    with open(tmp, "w", encoding="utf-8") as out:
        for document in iter_file_documents(path):
            out.write(document.replace("\n", " ") + "\n")
    return tmp


if __name__ == "__main__":
    main()
