"""Prediction files: GLUE submission TSVs, SQuAD prediction JSONs and raw-text inference records (TSV or JSON lines),
each written atomically (temp name + rename)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from datamodules.atomic import atomic_write_text
from datamodules.tasks import submission_file_names


def glue_submission_filename(task_name: str, dataloader_idx: int = 0) -> str:
    """`SST-2.tsv`, `MNLI-m.tsv` (idx 0) / `MNLI-mm.tsv` (idx 1); `<task_name>.tsv` for custom tasks."""
    names = submission_file_names(task_name)
    if dataloader_idx >= len(names):
        return f"{Path(names[0]).stem}-{dataloader_idx}.tsv"
    return names[dataloader_idx]


def format_glue_predictions(indices: Sequence[int], predictions: Sequence, label_names: Sequence[str] | None = None,
                            is_regression: bool = False) -> str:
    """`index\\tprediction` lines sorted by index: label strings (class ids without label_names), floats for STS-B."""
    if len(indices) != len(predictions):
        raise ValueError(f"{len(indices)} indices but {len(predictions)} predictions")
    lines = ["index\tprediction"]
    for index, pred in sorted(zip((int(i) for i in indices), predictions)):
        if is_regression:
            value = f"{float(pred):.3f}"
        else:
            value = label_names[int(pred)] if label_names else str(int(pred))
        lines.append(f"{index}\t{value}")
    return "\n".join(lines) + "\n"


def write_glue_predictions(path: str | os.PathLike, indices: Sequence[int], predictions: Sequence,
                           label_names: Sequence[str] | None = None, is_regression: bool = False) -> Path:
    """Write one GLUE submission TSV (see `format_glue_predictions`)."""
    return atomic_write_text(path, format_glue_predictions(indices, predictions, label_names, is_regression))


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_squad_predictions(output_dir: str | os.PathLike, predictions: Mapping[str, str],
                            null_odds: Mapping[str, float] | None = None) -> list[Path]:
    """`predictions.json` ({id: answer text}) and, for v2.0, `null_odds.json` ({id: null minus best span score})."""
    output_dir = Path(output_dir)
    written = [write_json(output_dir / "predictions.json", dict(predictions))]
    if null_odds:
        written.append(write_json(output_dir / "null_odds.json", dict(null_odds)))
    return written


def _tsv_cell(value) -> str:
    """A TSV cell (quoting off, as the project reads TSV): tabs and line breaks become spaces (one character for one,
    so character offsets into an echoed text stay right); None is empty; floats keep 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return str(value).translate({ord(c): " " for c in "\t\n\r"})


def records_format(path: str | os.PathLike) -> str:
    """'tsv' or 'jsonl' from the extension of an output file for prediction records (else a ValueError)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".tsv", ".jsonl"):
        raise ValueError(f"{path}: cannot tell the output format from the extension {suffix!r}; expected .tsv or "
                         f".jsonl")
    return suffix[1:]


def write_records(path: str | os.PathLike, records: Sequence[Mapping], rows: Sequence[Mapping] | None = None) -> Path:
    """Write prediction records by the extension of `path`: `.jsonl` one JSON object per record, `.tsv` a header
    (every key, in order of first appearance) and one line per entry of `rows` (flat dicts; default: the records)."""
    if records_format(path) == "jsonl":
        return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    rows = records if rows is None else rows
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["\t".join(header)] + ["\t".join(_tsv_cell(row.get(k)) for k in header) for row in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")
