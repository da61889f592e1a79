"""The one-line user errors of `python train.py` (and scripts/predict_text.py): what counts as bad input, its message
and the exit status.

`run` in train.py prints `error: <user_error_message(err)>` and exits with `exit_status(err)` (2 for bad input, 3 for
a non-finite loss); anything `user_error_message` does not recognise (a bug) keeps its traceback. jsonargparse's
multi-line parser errors are condensed to the option, its class and what is wrong, with a "did you mean" where a
close name exists (`condense_parser_error`). The refusals train.py's CLI raises as `CommandLineError` (--optimizer /
--lr_scheduler, a logger whose package is not installed) are worded here too.
"""
import argparse
import difflib
import importlib
import importlib.util
import inspect
import os
import re
import sys

from lightning.pytorch.utilities.exceptions import MisconfigurationException

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
DEBUG_ENV = "LITBERT_DEBUG"

# Causes reported as one line: bad input, options, files, models, checkpoints, and a diverged run.
USER_ERRORS = (ValueError, OSError, MisconfigurationException, argparse.ArgumentError)
_IGNORED_PARSER_LINES = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: |Errors:|- Expected a <class 'NoneType'>|"
    r"Given value type: |Given value: )")

OPTIMISER_KEYS = ("optimizer", "lr_scheduler")
# Loggers that need a package of their own: class -> (the package, setup.cfg's extra that installs it). Lightning
# would only fail once the model is built, in a traceback (a ModuleNotFoundError wrapped twice by jsonargparse).
LOGGER_PACKAGES = {"WandbLogger": ("wandb", "wandb"), "MLFlowLogger": ("mlflow", "mlflow")}


class CommandLineError(ValueError):
    """A command line or config file the parser refused (unknown option, wrong class_path, bad value)."""


def optimiser_refusal(key: str) -> str:
    """Why --optimizer / --lr_scheduler are refused, and the model's own options to use instead."""
    return (f"--{key} is not used by litbert: every model builds its own AdamW (no weight decay on biases and "
            f"LayerNorm weights) with a linear warmup and decay per optimiser step (lightning_modules/optim.py); set "
            f"--model.init_args.lr, weight_decay, betas, eps and warmup_ratio or warmup_steps instead")


def missing_logger_package(logger) -> str | None:
    """The refusal of a parsed `trainer.logger` (one or a list) whose class needs a package that is not installed."""
    from lightning.pytorch import loggers

    for item in logger if isinstance(logger, (list, tuple)) else [logger]:
        class_path = item.get("class_path") if hasattr(item, "get") else None
        cls = _import_class(class_path) if isinstance(class_path, str) else None
        for name, (package, extra) in LOGGER_PACKAGES.items():
            if (isinstance(cls, type) and issubclass(cls, getattr(loggers, name))
                    and importlib.util.find_spec(package) is None):
                return (f"trainer.logger {class_path}: needs the {package} package, which is not installed; install "
                        f"it with setup.cfg's extra, pip install -e \".[{extra}]\", or use a logger that needs nothing "
                        f"more (TensorBoard, the default, or lightning.pytorch.loggers.CSVLogger)")
    return None


def _optimiser_key(name: str) -> str | None:
    """'optimizer' / 'lr_scheduler' when the option `name` is (under) one of them (--optimizer.lr), else None."""
    key = name.lstrip("-").split("=")[0].split(".")[0]
    return key if key in OPTIMISER_KEYS else None


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _import_class(class_path: str):
    """The object `class_path` names, or None when it cannot be imported (the parser reports that itself)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 (only for a suggestion or a check)
        return None


def _class_arguments(class_path: str) -> list[str]:
    try:
        return list(inspect.signature(_import_class(class_path)).parameters)
    except Exception:  # noqa: BLE001 (only for a suggestion)
        return []


def _parser_options(parser, args) -> list[str]:
    """The option strings of the subcommand being parsed (for suggestions)."""
    options = []
    action = getattr(parser, "_subcommands_action", None)
    parsers = list(getattr(action, "_name_parser_map", {}).items()) if action is not None else []
    args = list(args or sys.argv[1:])
    for name, subparser in parsers or [(None, parser)]:
        if name is None or name in args:
            options += [o for o in getattr(subparser, "_option_string_actions", {}) if o.startswith("--")]
    return options


def _failing_config(args) -> str:
    """' FILE' for the first `--config FILE` of `args` that is not valid YAML ('' when none can be told)."""
    import yaml

    args = [str(a) for a in (args or sys.argv[1:])]
    files = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    files += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    for name in files:
        try:
            yaml.safe_load(open(name, encoding="utf-8").read())
        except yaml.YAMLError:
            return f" {name}"
        except OSError:
            continue
    return ""


def condense_parser_error(message: str, parser=None, args=None) -> str:
    """jsonargparse's multi-line error as one line: the option, its class and what is wrong (with a suggestion)."""
    first = message.strip().splitlines()[0] if message.strip() else message
    unrecognized = re.match(r"^unrecognized arguments: (.*)$", first)
    if unrecognized:
        words = [w for w in unrecognized.group(1).split() if w.startswith("-")]
        option = words[0].split("=")[0] if words else unrecognized.group(1)
        if _optimiser_key(option):
            return optimiser_refusal(_optimiser_key(option))
        return (f"unknown option {option}{_suggest(option, _parser_options(parser, args))}; "
                f"`python train.py fit --help` lists the options")
    config = re.match(r'^Parser key "config": (.*)$', first)
    if config:
        return f"--config: {config.group(1)}"
    if first.startswith("Problems parsing config"):
        detail = " ".join(message.strip().removeprefix("Problems parsing config").lstrip(" :").split())
        detail = detail.replace('in "<unicode string>", ', "at ")
        return f"--config{_failing_config(args)}: not valid YAML ({detail})"
    keys, class_path, leaf = [], None, []
    for raw in message.splitlines():
        line = raw.strip()
        if not line or _IGNORED_PARSER_LINES.match(line):
            continue
        key = re.match(r'^(?:- )?Parser key "([^"]+)":\s*(.*)$', line)
        if key:
            keys.append(key.group(1))
            if key.group(2):
                leaf.append(key.group(2))
            continue
        problem = re.match(r"^- Problem with given class_path '([^']+)':\s*(.*)$", line)
        if problem:
            class_path = problem.group(1)
            if problem.group(2):
                leaf.append(problem.group(2))
            continue
        leaf.append(line.removeprefix("- "))
    if not keys:
        return " ".join(leaf) or first
    what = "; ".join(leaf)
    if class_path is None:
        return f"{keys[0]}: {what}"
    not_accepted = re.match(r"^Option '([^']+)' is not accepted$", what)
    if not_accepted:
        name = not_accepted.group(1)
        option = f"{keys[0]}.init_args.{name}"
        return (f"unknown option {option}: {class_path} has no argument {name!r}"
                f"{_suggest(name, _class_arguments(class_path))}")
    if len(keys) > 1:  # a value of one of the class's arguments
        return f"{keys[0]}.init_args.{'.'.join(keys[1:])}: {what} ({class_path})"
    missing = re.match(r"^module '([^']+)' has no attribute '([^']+)'$", what)
    if missing:
        try:
            names = [n for n in dir(importlib.import_module(missing.group(1))) if not n.startswith("_")]
        except Exception:  # noqa: BLE001 (only for a suggestion)
            names = []
        close = difflib.get_close_matches(missing.group(2), names, n=1, cutoff=0.6)
        if close:
            what += f" (did you mean {missing.group(1)}.{close[0]}?)"
    return f"{keys[0]}.class_path {class_path}: {what}"


def _raised_by_parser(err: BaseException) -> bool:
    """jsonargparse re-raises an error of a class's __init__ wrapped in its own ValueError: look through those."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return bool(frames) and f"{os.sep}jsonargparse{os.sep}" in frames[-1]


def user_error_message(err: BaseException) -> str | None:
    """The one-line message `run` prints for `err`, or None when it is not bad input (a bug: show the traceback)."""
    from callbacks.nonfinite import NonFiniteLossError, NonFiniteWeightsError

    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (NonFiniteLossError, NonFiniteWeightsError)):
            return str(current)
        if isinstance(current, argparse.ArgumentError):
            return condense_parser_error(str(current))
        if not _raised_by_parser(current):
            if isinstance(current, USER_ERRORS):
                message = " ".join(str(current).split())  # one line
                option = getattr(current, "litbert_option", None)
                return f"{option}: {message}" if option and not message.startswith(option) else message
            return None
        nxt = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        if nxt is None:  # the parser's own message (no cause to show)
            return condense_parser_error(str(current))
        current = nxt
    return None


def exit_status(err: BaseException) -> int:
    from callbacks.nonfinite import NonFiniteLossError, NonFiniteWeightsError

    chain, current = [], err
    while current is not None and len(chain) < 20:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return EXIT_NON_FINITE if any(isinstance(e, (NonFiniteLossError, NonFiniteWeightsError)) for e in chain) \
        else EXIT_BAD_INPUT
