"""callbacks/cpu_dropout.py: train.py gives every run on the CPU the faster dropout mask (models/cpu_dropout.py), and
a config that lists the callback with `enabled: false` keeps torch's."""
from torch import nn

from callbacks.cpu_dropout import FastCPUDropout
from models.cpu_dropout import ATTENTION, CPUDropout
from tests.lightning_modules.test_finetune import run_cli


def test_every_cpu_fit_gets_it(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true")
    assert sum(isinstance(c, FastCPUDropout) for c in cli.trainer.callbacks) == 1
    model = cli.model.model
    assert model.config._attn_implementation == ATTENTION
    assert any(isinstance(m, CPUDropout) for m in model.modules())
    assert not any(type(m) is nn.Dropout for m in model.modules())


def test_a_config_can_keep_torchs_dropout(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true",
                  "--trainer.callbacks+=callbacks.cpu_dropout.FastCPUDropout",
                  "--trainer.callbacks.init_args.enabled=false")
    assert [c.enabled for c in cli.trainer.callbacks if isinstance(c, FastCPUDropout)] == [False]
    model = cli.model.model
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, CPUDropout) for m in model.modules())
