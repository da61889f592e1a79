"""configs/distill/roberta_general.yaml through train.py on the tiny fixtures (RoBERTa teacher, WikiText layout)."""
from pathlib import Path

import pytest

import train
from lightning_modules.distill import MaskedLMDistillationModule

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "distill" / "roberta_general.yaml")


def test_general_config_prints(capsys):
    with pytest.raises(SystemExit):
        train.main(args=["fit", "--config", CONFIG, "--print_config"])
    out = capsys.readouterr().out
    assert "MaskedLMDistillationModule" in out and "TextCorpusDataModule" in out and "alpha_ce: 5.0" in out


def test_general_fast_dev_run(tmp_path, data_dir, tiny_roberta_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's fixed checkpoint dirpath (artifacts/...) lands under tmp_path
    cli = train.main(args=[
        "fit", "--config", CONFIG, f"--model.init_args.teacher={tiny_roberta_dir}",
        f"--data.init_args.tokenizer={tiny_roberta_dir}", f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.max_seq_length=64", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'export'}", "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
    ])
    module = cli.model
    assert isinstance(module, MaskedLMDistillationModule)
    assert type(module.model).__name__ == "RobertaForMaskedLM" and module.model.config.num_hidden_layers == 2
    logged = cli.trainer.logged_metrics
    for key in ("train/loss", "train/loss_ce", "train/loss_mlm", "train/loss_cos", "train/temperature",
                "val/loss", "val_distill/loss_ce"):
        assert key in logged, key
    assert float(logged["train/temperature"]) == pytest.approx(2.0)
    assert not module.teacher.training
