"""Arguments every in-process `train.main` test run shares."""
from pathlib import Path


def quiet_run_args(tmp_path: Path) -> list[str]:
    """Outputs (checkpoints, TensorBoard logs) under `tmp_path`; no progress bar or model summary."""
    return [f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def model_data_args(data_dir: Path, model_dir: Path) -> list[str]:
    """Data read from the fixture `data_dir`; model and tokenizer from the same tiny model directory."""
    return [f"--data.init_args.data_dir={data_dir}", f"--data.init_args.tokenizer={model_dir}",
            f"--model.init_args.pretrained={model_dir}"]
