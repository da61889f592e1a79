"""Every YAML in configs/ parses and prints through train.py (the one-batch runs live in each area's tests)."""
from pathlib import Path

import pytest

import train

CONFIGS = sorted(str(p) for p in Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"))


def test_there_are_configs_for_every_recipe():
    kinds = {Path(p).parent.name for p in CONFIGS}
    assert {"mlm", "distill", "finetune"} <= kinds, kinds


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(Path(p).relative_to(Path(p).parents[2])))
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(args=["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path:" in printed and "trainer:" in printed
    assert "seed_everything: 42" in printed or "seed_everything:" in printed


def test_precision_default_follows_hardware(monkeypatch):
    import torch

    from lightning_modules.precision import native_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert train.default_precision() == "32-true" and not native_bf16("cpu")  # bf16 emulated: slower than fp32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # e.g. Zen 4
    assert train.default_precision() == "bf16-mixed" and native_bf16("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # e.g. Sapphire Rapids
    assert train.default_precision() == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU decides, whatever the CPU has
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert train.default_precision() == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert train.default_precision() == "bf16-mixed"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(Path(p).relative_to(Path(p).parents[2])))
def test_every_config_prints_progress(config):
    """ProgressLog (plain progress lines for logs: scripts/main_job.sh turns the bars off) is in every config, with
    the guards it sits beside; HFExport stays last (`--trainer.callbacks.init_args.dirpath` addresses the last)."""
    import yaml

    callbacks = [c["class_path"] for c in yaml.safe_load(Path(config).read_text())["trainer"]["callbacks"]]
    assert "callbacks.progress.ProgressLog" in callbacks
    assert {"callbacks.step_seed.StepSeed", "callbacks.preemption.PreemptionCheckpoint"} <= set(callbacks)
    if "callbacks.hf_export.HFExport" in callbacks:
        assert callbacks[-1] == "callbacks.hf_export.HFExport"
