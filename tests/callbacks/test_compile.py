"""callbacks/compile.py: the TorchCompile switch compiles the trained model in place and trains the same steps."""
import json

import pytest

import train
from tests.conftest import TINY
from tests.test_exact_resume import QUIET, recipe_args, save


@pytest.fixture
def bert_no_dropout_dir(tmp_path, wordpiece_tokenizer_dir):
    """A tiny BERT without dropout: the compiled and the eager run must then agree step by step."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                        **{**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    return save(BertForMaskedLM(config), tok, tmp_path / "bert")


def step_losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_compiled_run_trains_like_the_eager_run(tmp_path, monkeypatch, data_dir, bert_no_dropout_dir):
    monkeypatch.chdir(tmp_path)
    base = recipe_args("finetune", data_dir, {"bert": bert_no_dropout_dir}) + QUIET + [
        "--trainer.max_steps=3", "--model.init_args.lr=1e-2", "--model.init_args.warmup_ratio=0"]

    def run(name, *extra):
        root = tmp_path / name
        assert train.run(["fit", *base, f"--trainer.default_root_dir={root}",
                          f"--trainer.logger.init_args.save_dir={root}", "--trainer.callbacks+=tests.cli.LossLog",
                          f"--trainer.callbacks.init_args.path={root}.jsonl", *extra]) == 0
        return step_losses(tmp_path / f"{name}.jsonl")

    eager = run("eager")
    # aot_eager traces the model like inductor does (dynamo + AOTAutograd) without generating code: fast in a test
    compiled = run("compiled", "--trainer.callbacks+=callbacks.compile.TorchCompile",
                   "--trainer.callbacks.init_args.backend=aot_eager")
    assert len(eager) == len(compiled) == 3 and abs(eager[2] - eager[0]) > 1e-3  # training moved the loss
    assert compiled == pytest.approx(eager, abs=1e-5)
    # the export of the compiled run holds the plain model's parameter names
    export = next((tmp_path / "compiled").rglob("model.safetensors"))
    from safetensors import safe_open
    with safe_open(str(export), "pt") as handle:
        assert not any("_orig_mod" in key for key in handle.keys())


def test_only_fits_of_min_steps_compile_and_evaluation_runs_eager():
    from types import SimpleNamespace

    import torch
    from torch import nn

    from callbacks.compile import TorchCompile

    def module():
        return SimpleNamespace(model=nn.Linear(2, 2), teacher=None)

    def compiled(pl_module):
        return pl_module.model._compiled_call_impl is not None

    def trainer(steps):
        cpu = SimpleNamespace(root_device=torch.device("cpu"))
        return SimpleNamespace(estimated_stepping_batches=steps, strategy=cpu)

    short, long = trainer(99), trainer(100)
    pl_module = module()
    TorchCompile(min_steps=100).on_fit_start(short, pl_module)
    assert not compiled(pl_module)  # too short to repay compilation: eager
    callback, pl_module = TorchCompile(min_steps=100), module()
    callback.setup(long, pl_module, "fit")
    assert not compiled(pl_module)  # decided at fit start, after a resumed run restored its data's state
    callback.on_fit_start(long, pl_module)
    assert compiled(pl_module)
    callback.on_validation_start(long, pl_module)
    assert not compiled(pl_module)  # validation (and the sanity check) run the eager model
    callback.on_validation_end(long, pl_module)
    assert compiled(pl_module)
    callback.teardown(long, pl_module, "fit")
    assert not compiled(pl_module)  # a later validate/test in the process runs eager
    pl_module = module()
    TorchCompile().setup(long, pl_module, "validate")
    assert not compiled(pl_module)
    callback, pl_module = TorchCompile(evaluation=True), module()
    callback.setup(long, pl_module, "validate")
    callback.on_validation_start(long, pl_module)
    assert compiled(pl_module)
    with pytest.raises(ValueError, match="min_steps must be 0 or more"):
        TorchCompile(min_steps=-1)


def test_a_cpu_model_compiles_with_cpp_wrapper_unless_told_otherwise():
    import torch

    from callbacks.compile import TorchCompile

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert TorchCompile().compile_options(cpu)["options"] == {"cpp_wrapper": True}
    assert TorchCompile().compile_options(gpu)["options"] is None  # a GPU: inductor's defaults
    assert TorchCompile(cpu_options={}).compile_options(cpu)["options"] is None
    # the user's options win over the CPU's; a mode excludes options (torch.compile takes one or the other)
    mine = TorchCompile(options={"cpp_wrapper": False, "freezing": False}).compile_options(cpu)["options"]
    assert mine == {"cpp_wrapper": False, "freezing": False}
    assert TorchCompile(mode="max-autotune").compile_options(cpu)["options"] is None
    assert TorchCompile(backend="aot_eager").compile_options(cpu)["options"] is None  # options are inductor's

    # and a fit compiles the model with them (on the trainer's device)
    from types import SimpleNamespace

    from torch import nn

    class Recorded(nn.Linear):
        def compile(self, **kwargs):
            self.kwargs = kwargs
            super().compile(**kwargs)

    pl_module = SimpleNamespace(model=Recorded(2, 2), teacher=None)
    trainer = SimpleNamespace(estimated_stepping_batches=1, strategy=SimpleNamespace(root_device=cpu))
    TorchCompile().on_fit_start(trainer, pl_module)
    assert pl_module.model.kwargs == TorchCompile().compile_options(cpu)
    assert pl_module.model.kwargs["options"] == {"cpp_wrapper": True}
