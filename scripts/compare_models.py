"""Teacher vs student on a GLUE task: dev score, parameters and CPU latency, printed and written as markdown.

    python scripts/compare_models.py --teacher artifacts/main_job/teacher/best \
        --student artifacts/main_job/student/best --task_name sst2 --data_dir "$DATA_DIR" \
        --output artifacts/main_job/comparison.md

Both models are scored by the same code on the same dev batches (GLUEDataModule + the GLUE torchmetrics of
evaluation/glue_metrics.py) and timed by evaluation.latency.measure_cpu_latency on the same dev sentences.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.glue import GLUEDataModule  # noqa: E402
from evaluation.glue_metrics import glue_metric_collection, main_score, predictions_from_logits  # noqa: E402
from evaluation.latency import measure_cpu_latency  # noqa: E402
from datamodules.atomic import atomic_write_text  # noqa: E402
from models.inputs import model_inputs  # noqa: E402
from lightning_modules.finetune import glue_task_metrics  # noqa: E402
from models.pretrained import load_pretrained  # noqa: E402


@torch.inference_mode()
def dev_scores(model, datamodule: GLUEDataModule, metric_names: list[str]) -> dict[str, float]:
    """Metrics in percent over the first dev set, plus `score` (the task's main score)."""
    model.eval()
    loader = datamodule.val_dataloader()
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    metrics = glue_metric_collection(metric_names, max(datamodule.num_labels, 2))
    for batch in loader:
        logits = model(**model_inputs(model, batch)).logits
        metrics.update(predictions_from_logits(logits, datamodule.is_regression), batch["labels"])
    values = {k: 100.0 * float(v) for k, v in metrics.compute().items()}
    values["score"] = main_score(values, metric_names)
    return values


def dev_texts(datamodule: GLUEDataModule, n: int) -> list:
    """The first `n` dev inputs as strings (or (a, b) pairs) for the latency measurement."""
    dataset = datamodule.eval_datasets[0]
    tok = datamodule.tokenizer
    texts = tok.batch_decode(dataset[:n]["input_ids"], skip_special_tokens=True)
    return texts


def markdown(rows: list[dict], task: str, metric: str, latency_setup: str) -> str:
    teacher, student = rows
    lines = [f"# Teacher vs distilled student on {task} (dev)", "",
             f"| model | path | layers | parameters | dev {metric} (%) | CPU latency, median ms/batch |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['role']} | `{r['path']}` | {r['layers']} | {r['parameters']:,} | {r['score']:.2f} | "
                     f"{r['latency_ms']:.1f} |")
    lines += ["",
              f"Student / teacher: {student['parameters'] / teacher['parameters']:.1%} of the parameters, "
              f"{student['score'] / teacher['score']:.1%} of the teacher's dev {metric}, "
              f"{teacher['latency_ms'] / student['latency_ms']:.2f}x faster on the CPU.",
              "", f"Latency: {latency_setup}.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="exported teacher directory (sequence classification)")
    parser.add_argument("--student", required=True, help="exported student directory")
    parser.add_argument("--task_name", default="sst2")
    parser.add_argument("--data_dir", default=os.environ.get("DATA_DIR"))
    parser.add_argument("--hub_name", default=None, help="e.g. nyu-mll/glue: the dev set from the hub (online)")
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--latency_batch_size", type=int, default=32)
    parser.add_argument("--latency_examples", type=int, default=256)
    parser.add_argument("--latency_threads", type=int, default=1)
    parser.add_argument("--output", default="artifacts/main_job/comparison.md", help="markdown file (+ .json)")
    args = parser.parse_args(argv)
    for role in ("teacher", "student"):
        if not Path(getattr(args, role)).is_dir():
            raise SystemExit(f"compare_models: --{role} {getattr(args, role)!r} is not a directory")

    # The teacher's tokenizer for both: the student shares its vocabulary (checked before distillation).
    datamodule = GLUEDataModule(tokenizer=args.teacher, task_name=args.task_name, data_dir=args.data_dir,
                                hub_name=args.hub_name, max_seq_length=args.max_seq_length,
                                eval_batch_size=args.eval_batch_size)
    print(f"compare: preparing the {args.task_name} dev set", flush=True)
    datamodule.setup("validate")
    metric_names, _ = glue_task_metrics(datamodule.task_name, datamodule.is_regression, datamodule.num_labels)
    texts = dev_texts(datamodule, args.latency_examples)
    latency_setup = (f"evaluation.latency.measure_cpu_latency, {len(texts)} {args.task_name} dev sentences in batches "
                     f"of {args.latency_batch_size}, max_length {args.max_seq_length}, "
                     f"{args.latency_threads} thread(s), fp32, median of the timed batches")
    rows = []
    for role in ("teacher", "student"):
        path = getattr(args, role)
        start = time.perf_counter()
        model = load_pretrained(AutoModelForSequenceClassification, path)
        print(f"compare: {role} ({path}): scoring {len(datamodule.eval_datasets[0]):,} dev examples", flush=True)
        scores = dev_scores(model, datamodule, metric_names)
        print(f"compare: {role}: dev score {scores['score']:.2f} ({time.perf_counter() - start:.1f} s); timing "
              f"{len(texts)} sentences on {args.latency_threads} CPU thread(s)", flush=True)
        latency = measure_cpu_latency(model, datamodule.tokenizer, texts=texts, batch_size=args.latency_batch_size,
                                      max_length=args.max_seq_length, num_threads=args.latency_threads,
                                      repeats=max(8, len(texts) // args.latency_batch_size))
        print(f"compare: {role}: {latency.median_ms:.1f} ms per batch of {args.latency_batch_size}", flush=True)
        rows.append({"role": role, "path": path, "model_class": type(model).__name__,
                     "layers": model.config.num_hidden_layers, "parameters": sum(p.numel() for p in model.parameters()),
                     "score": scores["score"], "dev": scores, "latency_ms": latency.median_ms,
                     "latency": latency.as_dict()})
    text = markdown(rows, args.task_name, " + ".join(metric_names), latency_setup)
    print(text)
    out = Path(args.output)
    atomic_write_text(out, text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
