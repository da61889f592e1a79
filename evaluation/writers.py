"""Prediction files: GLUE submission TSVs and SQuAD prediction JSONs, each written atomically (temp name + rename)."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

# File names the GLUE server expects, by task name (MNLI has one file per validation/test set).
GLUE_SUBMISSION_FILES = {
    "cola": ("CoLA.tsv",), "sst2": ("SST-2.tsv",), "mrpc": ("MRPC.tsv",), "stsb": ("STS-B.tsv",),
    "qqp": ("QQP.tsv",), "mnli": ("MNLI-m.tsv", "MNLI-mm.tsv"), "qnli": ("QNLI.tsv",), "rte": ("RTE.tsv",),
    "wnli": ("WNLI.tsv",), "ax": ("AX.tsv",),
}


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` for writing before the rename."""
    return path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened like any new file (mkstemp would make it 0600: unreadable to others once renamed).
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def glue_submission_filename(task_name: str, dataloader_idx: int = 0) -> str:
    """`SST-2.tsv`, `MNLI-m.tsv` (idx 0) / `MNLI-mm.tsv` (idx 1); `<task_name>.tsv` for custom tasks."""
    names = GLUE_SUBMISSION_FILES.get(task_name, (f"{task_name}.tsv",))
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
