"""litbert's single entry point: `python train.py {fit,validate,test,predict} --config configs/<recipe>/<name>.yaml`.

LightningCLI in subclass mode: every config names its LightningModule (`model.class_path`) and DataModule
(`data.class_path`). Facts only the data knows (number of labels, label names, vocabulary size, ...) are linked
into the model once the DataModule is instantiated; a link whose target the chosen model lacks is skipped.
"""
import inspect

import torch
from lightning.pytorch.cli import LightningCLI, _get_module_type, _InstantiatorFn

# DataModule attribute -> LightningModule init argument (see docs/ARCHITECTURE.md, "Data facts").
DATA_TO_MODEL_LINKS = ("task_name", "num_labels", "label_names", "is_regression", "vocab_size", "pad_token_id")


def default_precision() -> str:
    """bf16 mixed precision on a GPU that supports it, full fp32 elsewhere (CPU bf16 autocast is slow)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def accepted_arguments(class_type) -> set[str] | None:
    """Names `class_type(...)` takes, or None when it takes any keyword (**kwargs)."""
    params = inspect.signature(class_type).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


class _LinkFilteringInstantiator(_InstantiatorFn):
    """Lightning's model instantiator, minus the linked data facts the chosen model class does not take.

    Without this, LightningCLI records every applied link in the model's hyperparameters, and `load_from_checkpoint`
    or `--ckpt_path FILE` later pass e.g. `label_names` to an MLM module that has no such argument.
    """

    def __call__(self, class_type, *args, applied_instantiation_links: dict, **kwargs):
        accepted = accepted_arguments(class_type)
        prefix = f"{self.key}.init_args."
        links = {
            key: value
            for key, value in applied_instantiation_links.items()
            if accepted is None or not key.startswith(prefix) or key[len(prefix):] in accepted
        }
        return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)


class LitBertCLI(LightningCLI):
    """LightningCLI with litbert's defaults: TensorBoard under runs/, precision by hardware, data->model links."""

    def _add_instantiators(self) -> None:
        super()._add_instantiators()
        self.parser.add_instantiator(
            _LinkFilteringInstantiator(cli=self, key="model"),
            _get_module_type(self._model_class),
            subclasses=self.subclass_mode_model,
            prepend=True,
        )

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
