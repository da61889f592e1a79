"""litbert's single entry point: `python train.py {fit,validate,test,predict} --config configs/<recipe>/<name>.yaml`.

LightningCLI in subclass mode: every config names its LightningModule (`model.class_path`) and DataModule
(`data.class_path`). Facts only the data knows (number of labels, label names, vocabulary size, ...) are linked
into the model once the DataModule is instantiated; a link whose target the chosen model lacks is skipped.
"""
import torch
from lightning.pytorch.cli import LightningCLI

# DataModule attribute -> LightningModule init argument (see docs/ARCHITECTURE.md, "Data facts").
DATA_TO_MODEL_LINKS = ("task_name", "num_labels", "label_names", "is_regression", "vocab_size", "pad_token_id")


def default_precision() -> str:
    """bf16 mixed precision on a GPU that supports it, full fp32 elsewhere (CPU bf16 autocast is slow)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class LitBertCLI(LightningCLI):
    """LightningCLI with litbert's defaults: TensorBoard under runs/, precision by hardware, data->model links."""

    def add_arguments_to_parser(self, parser):
        for name in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.set_defaults(
            {
                "trainer.precision": default_precision(),
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "litbert"},
                },
            }
        )


def main(args=None):
    return LitBertCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
