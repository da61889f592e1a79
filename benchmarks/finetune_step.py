"""Benchmark: litbert's GLUE fine-tuning step taken apart, outside Lightning, in one process (CPU).

The step of `configs/finetune/glue.yaml` (SST-2, the packaged MiniLM-L6, batch 32, length-grouped batches, bf16
autocast where the CPU multiplies bf16 natively, litbert's CPU dropout, the last layer at the first token, the kept
word-embedding gradient, fused AdamW, the malloc setting and oneDNN kernel cache) is rebuilt from the same pieces
(`GLUEDataModule`'s batches `--start` to `--start + --steps`, `SequenceClassificationModule.classify`,
`lightning_modules.optim`) and timed three ways:

1. cold and warm: the first pass over the batches in a fresh process against the next (ms a step, minor page faults
   a step): oneDNN builds a kernel for each new product shape, and the heap grows under the malloc setting; and with
   `--kernel_cache 1024` (oneDNN's default, not litbert's) over more than ~600 batches, the second pass rebuilds the
   kernels its cache evicted;
2. fixed and per-token cost: each batch's step time against its length (a least-squares line: ms at length 0, ms per
   token of length), and the step of a 1 x 4 batch, split into forward, backward and optimiser: the work of a step
   that shorter sequences do not remove (the optimiser's pass, the weights' casts, the operators' own overhead);
3. levers, in-process A/B: each variant of `VARIANTS` over the same batches, alternated with the shipped step
   (`litbert`), `--repeats` rounds after one untimed pass each, with the line of 2. for each. Some are the gain of a
   kept default switched off, some were tried and not kept (README "Speed" says why), one is an upper bound rather
   than a recipe, and `trainer_like` is what the Hugging Face Trainer's step computes (not its loop), to set litbert's
   fixed and per-token costs beside it.

    DATA_DIR=../shared/data python benchmarks/finetune_step.py --start 10 --steps 120 --repeats 3
    DATA_DIR=../shared/data python benchmarks/finetune_step.py --variants compiled --repeats 2  # torch.compile too
    DATA_DIR=../shared/data python benchmarks/finetune_step.py --start 300 --variants compiled compiled_python_wrapper
    # oneDNN's kernel cache (callbacks/cpu_kernel_cache.py): the second pass over 700 batches, default vs raised
    DATA_DIR=../shared/data python benchmarks/finetune_step.py --start 0 --steps 700 --variants --kernel_cache 1024
    DATA_DIR=../shared/data python benchmarks/finetune_step.py --start 0 --steps 700 --variants
    DATA_DIR=../shared/data python benchmarks/finetune_step.py --start 0 --steps 700 --count_kernels  # kernels built
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import os
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.finetune_glue import litbert_train_data, recipe  # noqa: E402
from benchmarks.harness import REPO, device_peak_flops, machine_line  # noqa: E402
from callbacks.cpu_embedding_grad import TouchedRowsGrad  # noqa: E402
from callbacks.cpu_kernel_cache import CAPACITY, CAPACITY_VARIABLE  # noqa: E402
from callbacks.cpu_malloc import keep_freed_memory  # noqa: E402
from lightning_modules import finetune  # noqa: E402
from lightning_modules.optim import configure_adamw_with_warmup  # noqa: E402
from lightning_modules.precision import native_bf16  # noqa: E402
from models.attention_hooks import encoder_layers  # noqa: E402
from models.cpu_dropout import ATTENTION, CPUDropout, use_cpu_dropout  # noqa: E402

STAGES = ("forward", "backward", "step")
CONFIG = REPO / "configs/finetune/glue.yaml"
MODEL_ARGS, DATA_ARGS = recipe(str(CONFIG))  # the step and data rebuilt here
EPOCHS = int(yaml.safe_load(CONFIG.read_text())["trainer"]["max_epochs"])  # its run's length


class Step:
    """litbert's fine-tuning step without Lightning: `module.classify` (under bf16 autocast when `autocast`), the
    backward pass into the kept word-embedding gradient (`rows`, callbacks/cpu_embedding_grad.py), and the module's
    own optimiser (`lightning_modules.optim`: fused AdamW over two weight-decay groups;
    its schedule is not stepped, so the learning rate stays at the peak: the schedule's cost is nil). A variant may set
    `after_backward` / `after_optimizer` (callables) and `autocast`."""

    def __init__(self, module: finetune.SequenceClassificationModule, autocast: bool):
        self.module, self.model, self.autocast = module, module.model.train(), autocast
        hp = module.hparams
        self.optimizer = configure_adamw_with_warmup(module, self.model, lr=hp.lr, weight_decay=hp.weight_decay,
                                                     betas=hp.betas, eps=hp.eps, warmup_steps=0,
                                                     total_steps=1 << 30)["optimizer"]
        self.rows = TouchedRowsGrad(self.model.get_input_embeddings())
        self.after_backward = self.after_optimizer = None
        self.compiled_calls: dict = {}  # a compiled variant's name -> its compiled forward, made once

    def loss(self, batch: dict) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.module.classify(batch, batch["labels"]).loss

    def backward(self, batch: dict) -> torch.Tensor:
        """The loss, with the model parameters' gradients in `.grad` (fp32, where the optimiser reads them)."""
        loss = self.loss(batch)
        if self.rows is not None:
            self.rows.attach()
        loss.backward()
        if self.after_backward is not None:
            self.after_backward()
        return loss

    def __call__(self, batch: dict, stage: str = "step") -> None:
        """Run the step up to `stage` ("forward", "backward" or the whole "step"), leaving no gradients behind."""
        if stage == "forward":
            self.loss(batch)
            return
        self.backward(batch)
        if stage == "step":
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if stage == "step" and self.after_optimizer is not None:
            self.after_optimizer()

    def timed(self, batches: list[dict], stage: str = "step") -> list[float]:
        """Seconds of each batch's `stage`."""
        times = []
        for batch in batches:
            start = time.perf_counter()
            self(batch, stage)
            times.append(time.perf_counter() - start)
        return times


# ---- the variants: context managers that change the step in place and restore it on exit ----

@contextlib.contextmanager
def full_last_layer(step: Step):
    """The last encoder layer at every position, not just the first token's."""
    original = finetune.last_layer_at
    finetune.last_layer_at = lambda model, positions=None: contextlib.nullcontext(False)
    try:
        yield
    finally:
        finetune.last_layer_at = original


@contextlib.contextmanager
def torch_dropout(step: Step):
    """Torch's own dropout and SDPA (its math path when dropout is on), not models/cpu_dropout.py's cheaper mask."""
    swapped = []
    for module in list(step.model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CPUDropout):
                setattr(module, name, nn.Dropout(child.p).train(child.training))
                swapped.append((module, name, child))
    step.model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        for module, name, child in swapped:
            setattr(module, name, child)
        step.model.set_attn_implementation(ATTENTION)


@contextlib.contextmanager
def dense_embedding_grad(step: Step):
    """torch's own embedding backward: a fresh, zero-filled vocabulary x hidden gradient every step."""
    step.rows.remove()
    step.rows = None
    try:
        yield
    finally:
        step.rows = TouchedRowsGrad(step.model.get_input_embeddings())


@contextlib.contextmanager
def no_hidden_dropout(step: Step):
    """The hidden-state dropouts (embeddings, attention output, feed-forward output, classifier) skipped; the
    attention-probability dropout kept (without it SDPA leaves its math path)."""
    attention_dropouts = {id(layer.attention.self.dropout) for layer in encoder_layers(step.model)}
    hidden = [m for m in step.model.modules() if isinstance(m, nn.Dropout) and id(m) not in attention_dropouts]
    for module in hidden:
        module.train(False)
    try:
        yield
    finally:
        for module in hidden:
            module.train(True)


def _fused_qkv_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertSelfAttention.forward with one [3H, H] product for the query, key and value projections."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    shape = hidden_states.shape[:-1]
    weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # [3H, H]
    bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
    qkv = F.linear(hidden_states, weight, bias).view(*shape, 3, -1, self.attention_head_size)  # [B, L, 3, heads, d]
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, d]
    attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
    out, weights = attention(self, query, key, value, attention_mask, scaling=self.scaling,
                             dropout=self.dropout.p if self.training else 0.0, **kwargs)
    return out.reshape(*shape, -1).contiguous(), weights


@contextlib.contextmanager
def fused_qkv(step: Step):
    """The query, key and value weights concatenated on the fly into one product (the layers the last-layer trim
    replaces keep their three)."""
    attentions = [layer.attention.self for layer in encoder_layers(step.model)]
    for attention in attentions:
        attention.forward = types.MethodType(_fused_qkv_forward, attention)
    try:
        yield
    finally:
        for attention in attentions:
            del attention.forward


@contextlib.contextmanager
def fp32_onednn_bf16(step: Step):
    """No autocast, the fp32 model's products computed by oneDNN in bf16 (`torch.backends.mkldnn.matmul.fp32_precision =
    "bf16"`): no casts, bf16 products."""
    previous, autocast = torch.backends.mkldnn.matmul.fp32_precision, step.autocast
    torch.backends.mkldnn.matmul.fp32_precision, step.autocast = "bf16", False
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision, step.autocast = previous, autocast


@contextlib.contextmanager
def cached_bf16_weights(step: Step):
    """Each Linear's weight and bias kept as a bf16 copy, refreshed after the optimiser step (the fp32 parameters stay
    the optimiser's masters): autocast casts no weights in the forward; the bf16 gradients are cast to fp32 after the
    backward. The same arithmetic as autocast, the casts moved."""
    linears = [m for m in step.model.modules() if isinstance(m, nn.Linear)]
    masters = [p for m in linears for p in (m.weight, m.bias)]
    copies = [p.detach().to(torch.bfloat16).requires_grad_() for p in masters]
    for i, module in enumerate(linears):
        module.forward = types.MethodType(lambda self, x, w=copies[2 * i], b=copies[2 * i + 1]: F.linear(x, w, b),
                                          module)

    def gradients_to_masters():
        for master, copy in zip(masters, copies):
            master.grad, copy.grad = copy.grad.float(), None

    def refresh_copies():
        with torch.no_grad():
            torch._foreach_copy_(copies, masters)

    step.after_backward, step.after_optimizer = gradients_to_masters, refresh_copies
    try:
        yield
    finally:
        step.after_backward = step.after_optimizer = None
        for module in linears:
            del module.forward


@contextlib.contextmanager
def trainer_like(step: Step):
    """The step as the Hugging Face Trainer computes it at its best settings (bf16 autocast, fused AdamW): the last
    layer at every position, torch's dropout and embedding backward, gradient clipping at 1.0 (its `max_grad_norm`
    default); not its loop."""
    with full_last_layer(step), torch_dropout(step), dense_embedding_grad(step):
        step.after_backward = lambda: torch.nn.utils.clip_grad_norm_(step.model.parameters(), 1.0)
        try:
            yield
        finally:
            step.after_backward = None


@contextlib.contextmanager
def compiled_as(step: Step, name: str, callback):
    """The model compiled (once per `name`) with the arguments `callback` (a callbacks.compile.TorchCompile) gives
    it on the model's device, with torch's dense embedding backward (the kept embedding gradient leaves a compiled
    model alone). The first pass compiles (a minute on 2 cores)."""
    with dense_embedding_grad(step):
        if name not in step.compiled_calls:
            step.model._compiled_call_impl = None
            step.model.compile(**callback.compile_options(next(step.model.parameters()).device))
            step.compiled_calls[name] = step.model._compiled_call_impl
        step.model._compiled_call_impl = step.compiled_calls[name]
        try:
            yield
        finally:
            step.model._compiled_call_impl = None


def compiled(step: Step):
    """`torch.compile(dynamic=True)` of the model as callbacks/compile.TorchCompile compiles it for a long fit: the
    last layer at the first token and the CPU dropout kept, on a CPU inductor's cpp_wrapper."""
    from callbacks.compile import TorchCompile

    return compiled_as(step, "compiled", TorchCompile())


def compiled_python_wrapper(step: Step):
    """The same without cpp_wrapper (TorchCompile's `cpu_options: {}`): the compiled graph calls its kernels from
    generated Python, inductor's default."""
    from callbacks.compile import TorchCompile

    return compiled_as(step, "compiled_python_wrapper", TorchCompile(cpu_options={}))


# name: (context manager, kind). Kinds: the gain of a kept default (switched off here), a lever tried and not kept,
# an upper bound that is not a recipe, the reference's computation.
KEPT, TRIED, BOUND = "kept default, switched off", "tried, not kept", "upper bound, not a recipe"
LONG_FITS = "glue.yaml's default for fits of min_steps or more"  # callbacks/compile.py
REFERENCE = "the Trainer's computation, here"
VARIANTS = {"trainer_like": (trainer_like, REFERENCE),
            "full_last_layer": (full_last_layer, KEPT), "torch_dropout": (torch_dropout, KEPT),
            "dense_embedding_grad": (dense_embedding_grad, KEPT),
            "no_hidden_dropout": (no_hidden_dropout, BOUND), "fused_qkv": (fused_qkv, TRIED),
            "fp32_onednn_bf16": (fp32_onednn_bf16, TRIED), "cached_bf16_weights": (cached_bf16_weights, TRIED),
            "compiled": (compiled, LONG_FITS), "compiled_python_wrapper": (compiled_python_wrapper, KEPT)}
BF16_ONLY = ("fp32_onednn_bf16", "cached_bf16_weights")  # variants of the bf16 step only
COMPILED = ("compiled", "compiled_python_wrapper")  # a minute of compilation each: run when named
DEFAULT_VARIANTS = [name for name in VARIANTS if name not in COMPILED]


# ---- measurement ----

def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line y = a + b x: (a, b, R^2)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    return intercept, slope, 1.0 - ss_res / ss_tot if ss_tot else 1.0


def faulted_pass(step: Step, batches: list[dict]) -> tuple[float, float]:
    """(ms a step, minor page faults a step) of one pass."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = sum(step.timed(batches))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return 1000 * seconds / len(batches), faults / len(batches)


def kernels_built(step: Step, batches: list[dict]) -> tuple[int, int]:
    """(oneDNN kernels built, distinct product shapes among them) in a pass over `batches`, from oneDNN's verbose
    lines ("create:cache_miss": a kernel built; its shape and layout follow), which it prints to file descriptor 1."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
                step.timed(batches)
        finally:
            libc.fflush(None)  # oneDNN writes through C's stdio buffer
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        built = [line.split(",", 4)[-1].rsplit(",", 1)[0] for line in log if ",create:cache_miss," in line]
    return len(built), len(set(built))


def tiny_batch(batch: dict, rows: int = 1, length: int = 4) -> dict:
    """The first `rows` examples of a batch cut to `length` tokens."""
    return {k: v[:rows, :length] if v.dim() == 2 else v[:rows] for k, v in batch.items()}


def window(data_dir: str, start: int, steps: int, epochs: int = 1) -> list[dict]:
    """The training batches `start` .. `start + steps` of glue.yaml's first `epochs` epochs in order (each epoch's
    order from the sampler's `set_epoch`, as Lightning sets it), from its data settings."""
    with tempfile.TemporaryDirectory(prefix="finetune-step-") as cache_dir:
        data = litbert_train_data(DATA_ARGS, Path(data_dir), Path(cache_dir))
        loader = data.train_dataloader()

        def epoch(e: int):
            loader.sampler.set_epoch(e)
            yield from loader

        batches = itertools.chain.from_iterable(epoch(e) for e in range(epochs))
        return list(itertools.islice(batches, start, start + steps))


def shipped_step(data_dir: str, start: int, steps: int, kernel_cache: int = CAPACITY,
                 epochs: int = 1) -> tuple[Step, list[dict]]:
    """glue.yaml's step in this process with litbert's CPU process settings (the malloc setting, oneDNN's kernel cache
    `kernel_cache`, its CPU dropout), and the training batches `start` .. `start + steps` of the first `epochs`.
    Denormals are computed as the CPU computes them (`FlushDenormals` is a fit's callback; none turn up before step
    ~700, benchmarks/denormals.py, which times both modes)."""
    os.environ[CAPACITY_VARIABLE] = str(kernel_cache)  # read by oneDNN at its first kernel, below
    keep_freed_memory()  # as callbacks/cpu_malloc.ReuseFreedMemory does in every CPU fit
    torch.manual_seed(42)
    batches = window(data_dir, start, steps, epochs)
    module = finetune.SequenceClassificationModule(task_name=DATA_ARGS["task_name"], num_labels=2, **MODEL_ARGS)
    use_cpu_dropout(module.model)
    return Step(module, autocast=native_bf16("cpu")), batches


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.environ.get("DATA_DIR", "data"), help="the data folder ($DATA_DIR)")
    p.add_argument("--start", type=int, default=10, help="first batch of the window (0-based, glue.yaml's order)")
    p.add_argument("--steps", type=int, default=120, help="batches in the window")
    p.add_argument("--repeats", type=int, default=3, help="alternated rounds of the variants")
    p.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS), help="variants to time")
    p.add_argument("--tiny_steps", type=int, default=50, help="steps of the 1 x 4 batch for each stage")
    p.add_argument("--count_kernels", action="store_true",
                   help="only count the oneDNN kernels a first pass over the batches builds (verbose; untimed)")
    p.add_argument("--kernel_cache", type=int, default=CAPACITY,
                   help="oneDNN's kernel-cache capacity (callbacks/cpu_kernel_cache.py; 1024: oneDNN's default)")
    args = p.parse_args(argv)

    step, batches = shipped_step(args.data_dir, args.start, args.steps, args.kernel_cache)
    dtype = "bf16" if step.autocast else "fp32"
    print(machine_line(device_peak_flops("cpu", [dtype])))
    lengths = [int(b["input_ids"].shape[1]) for b in batches]
    if len(set(lengths)) < 2:
        sys.exit(f"finetune_step.py: batches {args.start}..{args.start + args.steps} are {len(batches)} of one "
                 f"length; the fixed + per-token line needs two lengths at least (more --steps or another --start)")
    print(f"SST-2 batches {args.start}..{args.start + len(batches)} (batch 32, lengths {min(lengths)}-{max(lengths)}, "
          f"mean {sum(lengths) / len(lengths):.1f}), packaged MiniLM-L6, {dtype}, fused AdamW, malloc setting on, "
          f"oneDNN kernel cache {args.kernel_cache:,}")

    if args.count_kernels:
        built, distinct = kernels_built(step, batches)
        print(f"oneDNN kernels built in a first pass over the {len(batches)} batches: {built:,} ({distinct:,} distinct "
              f"product shapes and layouts; oneDNN's default cache keeps 1,024)")
        return
    cold = faulted_pass(step, batches)
    warm = faulted_pass(step, batches)
    print(f"\ncold and warm: first pass {cold[0]:.1f} ms a step ({cold[1]:,.0f} minor page faults a step), "
          f"second pass {warm[0]:.1f} ms ({warm[1]:,.0f}); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")

    times = step.timed(batches)
    intercept, slope, r2 = line_fit(lengths, [1000 * t for t in times])
    tiny = tiny_batch(batches[0])
    stage_ms = {}
    for stage in STAGES:
        step.timed([tiny] * 5, stage)
        stage_ms[stage] = 1000 * sum(step.timed([tiny] * args.tiny_steps, stage)) / args.tiny_steps
    print(f"fixed and per-token cost: step time = {intercept:.1f} ms + {slope:.2f} ms x batch length "
          f"(least squares over the {len(batches)} batches, R^2 {r2:.2f}); at the mean length "
          f"{sum(lengths) / len(lengths):.1f}: {intercept + slope * sum(lengths) / len(lengths):.1f} ms")
    print(f"a 1 x 4 batch: {stage_ms['step']:.1f} ms a step: forward {stage_ms['forward']:.1f} ms, backward "
          f"{stage_ms['backward'] - stage_ms['forward']:.1f} ms, optimiser step "
          f"{stage_ms['step'] - stage_ms['backward']:.1f} ms")

    if not args.variants:
        return
    names = ["litbert"] + [n for n in args.variants if step.autocast or n not in BF16_ONLY]
    contexts = {"litbert": contextlib.nullcontext, **{name: context for name, (context, _) in VARIANTS.items()}}
    for name in names:  # one untimed pass each: new shapes, and compilation for the compiled variants
        with contexts[name](step):
            step.timed(batches)
    per_batch = {name: [] for name in names}  # each round's ms of each batch
    for round_ in range(args.repeats):
        for name in names:
            with contexts[name](step):
                per_batch[name].append([1000 * t for t in step.timed(batches)])
            ms = sum(per_batch[name][-1]) / len(batches)
            print(f"  [{round_ + 1}/{args.repeats}] {name:22s} {ms:6.1f} ms a step", flush=True)
    mean = {name: sum(map(sum, rounds)) / (len(rounds) * len(batches)) for name, rounds in per_batch.items()}
    print("\n| variant | kind | ms a step (each round) | mean | against litbert | fixed + per token (ms) |\n"
          "|---|---|---|---:|---:|---|")
    for name, rounds in per_batch.items():
        kind = "the shipped step" if name == "litbert" else VARIANTS[name][1]
        each = ", ".join(f"{sum(r) / len(r):.1f}" for r in rounds)
        intercept, slope, _ = line_fit(lengths * len(rounds), [ms for r in rounds for ms in r])
        print(f"| {name} | {kind} | {each} | {mean[name]:.1f} | {100 * (mean[name] / mean['litbert'] - 1):+.1f}% "
              f"| {intercept:.1f} + {slope:.2f} x length |")


if __name__ == "__main__":
    main()
