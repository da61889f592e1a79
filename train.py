"""litbert's single entry point: `python train.py {fit,validate,test,predict} --config configs/<recipe>/<name>.yaml`.

LightningCLI in subclass mode: every config names its LightningModule (`model.class_path`) and DataModule
(`data.class_path`). Facts only the data knows (number of labels, label names, vocabulary size, ...) are linked
into the model once the DataModule is instantiated; a link whose target the chosen model lacks is skipped, and a
value given to a linked model argument (`--model.init_args.label_names`) is refused, naming the data option to set.
Every run validates once more when `max_steps` ends it inside an epoch, and `fit`/`validate`/`test` end with a table
of the final metrics (callbacks/run_end.py).

Errors (`run`, what `python train.py` calls): bad input (a data file, a model or tokenizer directory, a checkpoint, a
misspelt option, a wrong class_path, an unknown task, a W&B or MLflow logger whose package is not installed, ...) is
printed as `error: <the cause>` on one line, naming the file, line or option and what was expected, and the exit
status is 2; a non-finite training loss stops the run with status 3 (callbacks/nonfinite.py); SIGTERM / Ctrl+C save a
resumable checkpoint and exit 143 / 130 (callbacks/preemption.py). `LITBERT_DEBUG=1` shows the full traceback
instead. `main` raises, for use from Python. The messages, what counts as bad input and the exit statuses are in
cli_errors.py.

The command line: `--model` / `--data` list litbert's LightningModules and DataModules (`litbert_classes`), whose
docstrings document every argument (`--model.help NAME`). `--optimizer` / `--lr_scheduler` are refused: every model
builds its own AdamW with warmup and no decay on biases/LayerNorm (lightning_modules/optim.py), which LightningCLI's
automatic optimiser would silently replace. With `--ckpt_path FILE`, the model arguments stored in the checkpoint
fill in what the command line and the config files leave unset: what they set wins (e.g. predict's output_dir).
Every run gets the callbacks of `callbacks.add_default_callbacks` (TensorBoard's hp_metric = the final main score,
validation at a mid-epoch max_steps, the final metrics table, and on a CPU the faster dropout mask, glibc's malloc
keeping freed memory, oneDNN keeping the kernels of every product shape, the input embedding's gradient kept
between steps and denormal floats flushed to zero), each unless the config lists one of its class.

Checkpoints: a ModelCheckpoint without `dirpath` saves to `<trainer.default_root_dir>/checkpoints` (not to the
logger's versioned folder), so `--ckpt_path last` finds the `last.ckpt` of the previous run with the same
default_root_dir; `--ckpt_path last` with no such file, and a `--ckpt_path` file that is empty, truncated or not a
checkpoint, are errors naming the file (Lightning would start from scratch, or fail deep in torch.load).
"""
import argparse
import importlib
import inspect
import os
import pickle
import pkgutil
import sys
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, _get_module_type, _InstantiatorFn

from callbacks import add_default_callbacks
from cli_errors import (DEBUG_ENV, OPTIMISER_KEYS, CommandLineError, condense_parser_error, exit_status,
                        missing_logger_package, optimiser_refusal, user_error_message)
from lightning_modules.precision import default_precision
from models.convert import CheckpointFileError, check_checkpoint_file

# DataModule attribute -> LightningModule init argument (see docs/ARCHITECTURE.md, "Data facts"), and the data
# option that decides each (named when a model-side value is refused).
DATA_TO_MODEL_LINKS = ("task_name", "num_labels", "label_names", "label_display_names", "is_regression", "vocab_size",
                       "pad_token_id")
DATA_OPTIONS = {"task_name": "data.init_args.task_name", "num_labels": "data.init_args.label_names or label_map",
                "label_names": "data.init_args.label_names", "is_regression": "data.init_args.is_regression",
                "label_display_names": "data.init_args.label_names or data.init_args.label_map",
                "vocab_size": "data.init_args.tokenizer", "pad_token_id": "data.init_args.tokenizer"}


TOOL_DESCRIPTION = (
    "litbert: BERT-family masked-LM pretraining, DistilBERT-style distillation and GLUE/SQuAD fine-tuning with "
    "PyTorch Lightning. A run is a recipe config (--config configs/<recipe>/<name>.yaml) that names the model "
    "(--model, one of litbert's LightningModules below) and the data (--data, one of its DataModules); any option "
    "can be overridden on the command line (--model.init_args.lr 1e-4, --trainer.max_epochs 1). --model.help NAME "
    "and --data.help NAME document a class's arguments, --print_config shows the resolved config. The optimiser "
    "is part of the model: AdamW with linear warmup and decay, set by --model.init_args.lr, weight_decay, betas, "
    "eps and warmup_ratio or warmup_steps. Bad input is one line, `error: ...`, and exit status 2.")
SUBCOMMANDS = {"fit": "train (and validate) a model", "validate": "one pass over the validation data",
               "test": "one pass over the test data", "predict": "write predictions (GLUE/SQuAD submission files)"}
# --model / --data: the package that holds the choices, their base class, and whether the option is required
CHOICES = {"model": ("lightning_modules", LightningModule, True), "data": ("datamodules", LightningDataModule, False)}
# the methods a class must define (not inherit from Lightning's base) to be a choice, not only a shared base
RUNNABLE = {LightningModule: "training_step", LightningDataModule: "train_dataloader"}


def litbert_classes(package: str, base: type, runnable_only: bool = False) -> list[type]:
    """The public subclasses of `base` defined in the modules of `package` (all imported here), by import path;
    `runnable_only` drops shared bases that do not define `RUNNABLE[base]` (FineTuningModule, LitBertDataModule)."""
    found = {}
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == module.__name__
                    and not obj.__name__.startswith("_")):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    classes = [found[name] for name in sorted(found)]
    if runnable_only:
        method = RUNNABLE[base]
        classes = [c for c in classes if getattr(c, method) is not getattr(base, method)]
    return classes


def short_description(cls: type) -> str:
    """The first sentence of a class's docstring."""
    first = inspect.getdoc(cls).split("\n\n")[0].replace("\n", " ") if inspect.getdoc(cls) else ""
    return first.split(". ")[0].rstrip(".:")


def choices_help(key: str) -> str:
    """The help of --model / --data: every choice with what it is for."""
    package, base, _ = CHOICES[key]
    listed = "; ".join(f"{c.__qualname__} ({short_description(c)})"
                       for c in litbert_classes(package, base, runnable_only=True))
    return (f"The {key} class (class_path, or its name) and its init_args, usually from the config. "
            f"litbert's choices: {listed}. --{key}.help NAME documents every argument of one.")


def accepted_arguments(class_type) -> set[str] | None:
    """Names `class_type(...)` takes, or None when it takes any keyword (**kwargs)."""
    params = inspect.signature(class_type).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


class _LinkFilteringInstantiator(_InstantiatorFn):
    """Lightning's model (and data) instantiator, minus the linked data facts the chosen class does not take, and
    naming the option whose value an error of the constructor is about.

    Without the filter, LightningCLI records every applied link in the model's hyperparameters, and
    `load_from_checkpoint` or `--ckpt_path FILE` later pass e.g. `label_names` to an MLM module that has no such
    argument. An error whose message holds the value of exactly one text argument (a missing teacher directory, an
    unknown model or task name) is reported as `model.init_args.teacher: ...` (see `user_error_message`).
    """

    def __call__(self, class_type, *args, applied_instantiation_links: dict, **kwargs):
        accepted = accepted_arguments(class_type)
        prefix = f"{self.key}.init_args."
        links = {
            key: value
            for key, value in applied_instantiation_links.items()
            if accepted is None or not key.startswith(prefix) or key[len(prefix):] in accepted
        }
        try:
            return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)
        except (OSError, ValueError) as err:
            named = [name for name, value in kwargs.items()
                     if isinstance(value, (str, os.PathLike)) and len(str(value)) >= 3 and str(value) in str(err)]
            if len(named) == 1 and not hasattr(err, "litbert_option"):
                err.litbert_option = f"{prefix}{named[0]}"
            raise


def refuse_linked_model_values(config) -> None:
    """A linked model argument with a value other than its default would be overwritten by the data's: refuse it."""
    subcommand = config.get("subcommand")
    model = (config[subcommand] if subcommand else config).get("model")
    class_path = model.get("class_path") if model is not None else None
    if not class_path:
        return
    module, _, name = class_path.rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    given = model.get("init_args") or {}
    for fact in DATA_TO_MODEL_LINKS:
        if fact in parameters and fact in given and given[fact] != parameters[fact].default:
            raise CommandLineError(f"model.init_args.{fact}: comes from the data (train.py links the DataModule's "
                                   f"{fact} into the model); set {DATA_OPTIONS[fact]} instead")


class MissingCheckpointError(FileNotFoundError):
    """`--ckpt_path last` with no last checkpoint to resume."""


def default_checkpoint_dirs(trainer) -> list[str]:
    """Give every ModelCheckpoint without `dirpath` the fixed `<default_root_dir>/checkpoints`; return the dirpaths."""
    dirs = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            if callback.dirpath is None:
                root = str(trainer.default_root_dir)
                directory = os.path.join(root, "checkpoints")
                callback.dirpath = directory if "://" in root else os.path.realpath(directory)
            dirs.append(str(callback.dirpath))
    return dirs


def resolve_last_checkpoint(trainer, subcommand: str) -> str:
    """The newest `last*.ckpt` of the trainer's ModelCheckpoint callbacks, checked; else MissingCheckpointError."""
    checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    candidates = {path for cb in checkpoints for path in cb._find_last_checkpoints(trainer) if os.path.isfile(path)}
    if not candidates:
        where = (f"in {', '.join(sorted({str(cb.dirpath) for cb in checkpoints}))}" if checkpoints
                 else "(the config has no ModelCheckpoint callback)")
        fresh = "start the run without --ckpt_path" if subcommand == "fit" else "give a checkpoint file"
        raise MissingCheckpointError(
            f"--ckpt_path last: no last checkpoint {where}; nothing was saved there yet, or the run used another "
            f"--trainer.default_root_dir: {fresh}, or give the file (--ckpt_path PATH.ckpt)")
    newest = max(candidates, key=os.path.getmtime)
    check_checkpoint_file(newest, "--ckpt_path last ->")
    return newest


class LitBertCLI(LightningCLI):
    """LightningCLI with litbert's defaults: TensorBoard under runs/, precision by hardware, data->model links,
    litbert's classes as the --model/--data choices, no --optimizer/--lr_scheduler, fixed checkpoint directories,
    checked `--ckpt_path` (whose stored model arguments yield to those given), and parser errors raised (see `run`)
    instead of printed."""

    def __init__(self, *args, auto_configure_optimizers: bool = False, **kwargs):
        # No LightningCLI optimiser: the models' own (see `optimiser_refusal`); --optimizer is refused instead.
        super().__init__(*args, auto_configure_optimizers=auto_configure_optimizers, **kwargs)

    def init_parser(self, **kwargs):
        kwargs.setdefault("exit_on_error", False)  # `run` prints one line, not the whole usage
        return super().init_parser(**kwargs)

    def add_core_arguments_to_parser(self, parser) -> None:
        # LightningCLI's own, but --model / --data list litbert's classes (not only the Lightning base class)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        for key, (_, base, required) in CHOICES.items():
            parser.add_subclass_arguments(base, key, fail_untyped=False, required=required, help=choices_help(key))
            parser.groups[key].title = f"--{key}: the {'LightningModule' if key == 'model' else 'DataModule'}"

    def parse_arguments(self, parser, args) -> None:
        self.given_args = args  # parsed again on top of a checkpoint's hyper-parameters (_parse_ckpt_path)
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            raise CommandLineError(condense_parser_error(str(err), parser, args)) from err
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        for key in OPTIMISER_KEYS:
            if not self.auto_configure_optimizers and config.get(key) is not None:
                raise CommandLineError(optimiser_refusal(key))
        refusal = missing_logger_package(config.get("trainer.logger"))
        if refusal:  # now, not once the model is built (Lightning's traceback)
            raise CommandLineError(refusal)
        refuse_linked_model_values(self.config)

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):  # callbacks/run_end.py prints the table (--verbose: Lightning's too)
            parser.set_defaults(verbose=False)
        return parser

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters here, before anything is built: check the file first,
        # so an empty or truncated one is one line naming it rather than torch's EOFError.
        subcommand = self.config.get("subcommand") if hasattr(self.config, "get") else None
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        special = ckpt_path in ("last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:")
        if ckpt_path and not special:
            check_checkpoint_file(ckpt_path, "--ckpt_path")
        given = self.config
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise CheckpointFileError(f"--ckpt_path {ckpt_path}: cannot be read ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else ''})") from err
        args = self.given_args
        if self.config is not given and not isinstance(args, (dict, argparse.Namespace)):
            # Lightning put the checkpoint's model arguments on top of everything given; what the command line and
            # the config files set (parsed again without the defaults) goes back on top, so the checkpoint only
            # fills in what they leave unset (e.g. predict's --model.init_args.output_dir wins).
            explicit = self.parser.parse_args(sys.argv[1:] if args is None else args, defaults=False)
            self.config = self.parser.parse_object(explicit, self.config)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        default_checkpoint_dirs(trainer)
        add_default_callbacks(trainer)
        return trainer

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":  # Lightning would warn and start from scratch
            kwargs["ckpt_path"] = resolve_last_checkpoint(self.trainer, subcommand)
        return kwargs

    def _add_instantiators(self) -> None:
        super()._add_instantiators()
        self.parser.add_instantiator(
            _LinkFilteringInstantiator(cli=self, key="model"),
            _get_module_type(self._model_class),
            subclasses=self.subclass_mode_model,
            prepend=True,
        )
        self.parser.add_instantiator(
            _LinkFilteringInstantiator(cli=self, key="data"),
            _get_module_type(self._datamodule_class),
            subclasses=self.subclass_mode_data,
            prepend=True,
        )

    def add_arguments_to_parser(self, parser):
        if not self.auto_configure_optimizers:  # kept as options (a config saved with `optimizer: null` loads)
            for key in OPTIMISER_KEYS:
                parser.add_argument(f"--{key}", type=Any, default=None, help=optimiser_refusal(key))
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
        parser_kwargs={"description": TOOL_DESCRIPTION,
                       **{name: {"description": f"{name}: {what}. {TOOL_DESCRIPTION}"}
                          for name, what in SUBCOMMANDS.items()}},
        args=args,
    )


def run(args=None) -> int:
    """`python train.py ...`: `main`, with bad input reported as one line (`error: ...`) and a non-zero status."""
    debug = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    try:
        main(args)
    except KeyboardInterrupt:  # outside fit (Lightning handles it inside): e.g. while tokenizing
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 (anything that is not bad input is re-raised with its traceback)
        message = None if debug else user_error_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        print(f"(set {DEBUG_ENV}=1 for the full traceback)", file=sys.stderr)
        return exit_status(err)
    return 0


if __name__ == "__main__":
    sys.exit(run())
