"""Convert a Lightning `.ckpt` of any litbert module into a Hugging Face export directory.

    python scripts/convert_checkpoint.py runs/litbert/version_0/checkpoints/last.ckpt artifacts/export/mlm \
        [--tokenizer DIR]

The directory is the one the HFExport callback writes (safetensors + config, tokenizer, README.md model card) and
loads with `AutoModelFor...from_pretrained(OUT)`. The tokenizer defaults to the DataModule's `tokenizer`
hyper-parameter recorded in the checkpoint. All the logic lives in models/convert.py.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from models.convert import convert_checkpoint  # noqa: E402


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) written by a litbert LightningModule")
    parser.add_argument("out", help="export directory to write (replaced atomically if it exists)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory or name (default: the one recorded in the checkpoint)")
    args = parser.parse_args(argv)
    try:
        out = convert_checkpoint(args.ckpt, args.out, tokenizer=args.tokenizer, command=["python", *sys.argv])
    except (FileNotFoundError, KeyError, ValueError) as err:
        parser.exit(2, f"convert_checkpoint.py: error: {err.args[0] if err.args else err}\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
