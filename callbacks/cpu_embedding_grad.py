"""SparseEmbeddingGrad: on the CPU, the word embeddings' gradient is kept between steps and only the rows a batch used
are added and cleared, instead of a fresh vocabulary-sized matrix each step.

A batch of 32 SST-2 sentences uses a few hundred of MiniLM-L6's 30,522 vocabulary rows, yet torch's embedding backward
allocates the whole vocabulary x hidden gradient (47 MB), fills it with zeros and adds those rows into it, and the
optimiser's `zero_grad` frees it again: every step writes 47 MB that are all zeros but a few hundred rows. Here the
input embedding runs with `sparse=True` (its backward hands autograd the used rows only), autograd adds those rows in
place into a dense buffer that stays attached from one step to the next, and before the next backward only the rows
used since the last clearing are set back to zero. The optimiser still reads a dense gradient equal bit for bit to
torch's (tests/callbacks/test_cpu_embedding_grad.py), so the update is the same. Measured on the 2-core CPU
(`benchmarks/finetune_step.py`, README "Speed"): MiniLM-L6 fine-tuning on SST-2, torch's dense backward instead took
4.3% longer a step (105.6 against 101.3 ms, four alternated rounds). The price: the gradient stays allocated through
the forward pass too (47 MB for MiniLM-L6; peak RSS 1,770 MB in that run, 1,721 MB in the one before it without).

Why by hand: torch's sparse embedding gradient is meant for optimisers that take sparse gradients (`SparseAdam`, a
different algorithm); AdamW needs the dense one, and nothing in torch or Lightning keeps a dense gradient between
steps and clears only the rows that changed.

Where it acts: a fit on the CPU in one process, an uncompiled model whose input embeddings (`get_input_embeddings()`)
are a trained `nn.Embedding` that no output layer shares. A tied MLM decoder multiplies by every row, so its gradient
is dense anyway: such a model (MLM pretraining, general distillation) is left alone; and should a dense gradient reach
the weight some other way, the whole buffer is cleared, as `zero_grad` would. Under DDP (whose reducer handles sparse
gradients its own way), on a GPU (where the fill costs microseconds) or with a compiled model it does nothing.

train.py adds this callback to every run unless the config lists it (`callbacks.add_default_callbacks`). YAML (under
`trainer:`), to keep torch's dense embedding backward:

    callbacks:
      - class_path: callbacks.cpu_embedding_grad.SparseEmbeddingGrad
        init_args: {enabled: false}
"""
from __future__ import annotations

import torch
from lightning.pytorch import Callback
from torch import nn


class TouchedRowsGrad:
    """The mechanism, for any training loop: an embedding switched to sparse gradients whose rows are added into a kept
    dense buffer; call `attach()` before each backward and `remove()` when training ends.

    Args:
        embedding: the input embedding (its weight trained and used by nothing but its own lookup).
    """

    def __init__(self, embedding: nn.Embedding):
        self.embedding, weight = embedding, embedding.weight
        self.buffer = torch.zeros_like(weight)  # [vocab, hidden]: the gradient autograd adds into
        self.touched = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)  # [vocab]: rows to clear
        self.dense = False  # a dense gradient arrived since the last clearing: clear every row
        embedding.sparse = True
        self.hook = weight.register_hook(self._record)

    def _record(self, grad: torch.Tensor) -> None:
        """A gradient on its way into the buffer: note its rows (a sparse one's; all rows for a dense one)."""
        if grad.is_sparse:
            self.touched[grad._indices()[0]] = True  # uncoalesced [1, nnz] row indices: repeats are harmless
        else:
            self.dense = True

    def attach(self) -> None:
        """Before a backward: if `zero_grad` dropped the gradient (set it to None), give the weight the buffer back
        with the rows used since the last clearing zeroed; an attached gradient (accumulation) is left as it is."""
        weight = self.embedding.weight
        if weight.grad is not None:
            return
        if self.dense:
            self.buffer.zero_()
        else:
            self.buffer.index_fill_(0, self.touched.nonzero().squeeze(1), 0.0)
        self.touched.zero_()
        self.dense = False
        weight.grad = self.buffer

    def remove(self) -> None:
        """Back to torch's dense embedding backward; the buffer is let go."""
        self.hook.remove()
        self.embedding.sparse = False
        if self.embedding.weight.grad is self.buffer:
            self.embedding.weight.grad = None


def trainable_input_embedding(model: nn.Module) -> nn.Embedding | None:
    """The model's input embedding if `TouchedRowsGrad` can serve it: an `nn.Embedding` with dense gradients whose
    weight trains and is not an output layer's too; else None."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    if type(embedding) is not nn.Embedding or embedding.sparse or not embedding.weight.requires_grad:
        return None
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return None  # tied: the decoder's gradient covers every row
    return embedding


class SparseEmbeddingGrad(Callback):
    """Keep the input embedding's gradient between steps and clear only the rows used, when fitting on the CPU.

    Args:
        enabled: False keeps torch's dense embedding backward.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.rows: TouchedRowsGrad | None = None  # set while it acts
        self.applied = False  # whether it acted in this fit (for logs and tests)

    def on_train_start(self, trainer, pl_module) -> None:
        # after every callback's setup and on_fit_start, so a model that callbacks.compile.TorchCompile compiles (at
        # fit start) is seen as compiled
        model = getattr(pl_module, "model", None)
        if not self.enabled or model is None or self.rows is not None:
            return
        compiled = getattr(model, "_compiled_call_impl", None) is not None
        if compiled or trainer.world_size > 1 or trainer.strategy.root_device.type != "cpu":
            return
        embedding = trainable_input_embedding(model)
        if embedding is not None:
            self.rows, self.applied = TouchedRowsGrad(embedding), True

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if self.rows is not None:
            self.rows.attach()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.rows is not None:
            self.rows.remove()
            self.rows = None
