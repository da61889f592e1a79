"""The command line (train.py): the help lists litbert's classes and documents every argument, --optimizer /
--lr_scheduler are refused (tests/test_bad_input.py has their messages), options given win over a checkpoint's
stored values, TensorBoard's hp_metric is the final main score, and other loggers work through --trainer.logger."""
from __future__ import annotations

import inspect

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule

import train
from callbacks.hp_metric import main_score
from tests.cli import SignalAt, model_data_args, quiet_run_args

FINETUNE = "configs/finetune/glue.yaml"
ALL_CLASSES = [cls for package, base, _ in train.CHOICES.values() for cls in train.litbert_classes(package, base)]


def test_help_lists_litbert_classes_and_describes_the_tool(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["fit", "--help"])
    assert exit_info.value.code in (0, None)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "litbert: BERT-family masked-LM pretraining" in text
    runnable = [cls for package, base, _ in train.CHOICES.values()
                for cls in train.litbert_classes(package, base, runnable_only=True)]
    assert {"SequenceClassificationModule", "MaskedLMModule", "GLUEDataModule", "TextCorpusDataModule"} <= {
        cls.__name__ for cls in runnable}
    for cls in runnable:
        assert f"{cls.__qualname__} (" in text, cls  # listed with what it is for
    assert "FineTuningModule (" not in text and "LitBertDataModule (" not in text  # shared bases are no choices


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__qualname__)
def test_every_argument_has_its_own_docstring_line(cls):
    """What `--model.help` / `--data.help` show: jsonargparse reads one `name: text` line per argument (Google
    style, base classes included); a grouped line such as `lr / weight_decay: ...` documents none of them."""
    assert issubclass(cls, (LightningModule, LightningDataModule))
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "x", fail_untyped=False)
    helps = {action.dest.removeprefix("x."): action.help for action in parser._actions}
    arguments = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    undocumented = [name for name in arguments if not helps.get(name)]
    assert not undocumented, f"{cls.__qualname__}: no docstring line for {undocumented}"


def test_main_score_is_val_score_else_val_loss():
    assert main_score({"val/loss": 0.5, "val/score": 80.0}) == ("val/score", 80.0)
    assert main_score({"val/loss": torch.tensor(2.5), "val/perplexity": 12.2}) == ("val/loss", 2.5)
    assert main_score({"train/loss": 1.0}) is None


def tiny_finetune(data_dir, model_dir, run_dir, *extra, subcommand="fit"):
    return train.main([subcommand, "--config", FINETUNE, *model_data_args(data_dir, model_dir),
                       *quiet_run_args(run_dir), "--data.init_args.batch_size=8", "--trainer.max_epochs=1",
                       "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", *extra])


def hp_metric_values(log_dir) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.value for event in events.Scalars("hp_metric")]


def test_hp_metric_is_the_final_score_and_options_given_win_over_the_checkpoint(data_dir, tiny_bert_dir, tmp_path):
    fit = tiny_finetune(data_dir, tiny_bert_dir, tmp_path, "--model.init_args.classifier_dropout=0.3",
                        f"--model.init_args.output_dir={tmp_path / 'stored'}")
    score = float(fit.trainer.callback_metrics["val/score"])
    values = hp_metric_values(fit.trainer.logger.log_dir)
    assert values[0] == -1 and values[-1] == pytest.approx(score)  # Lightning's -1 at the start, then the score

    # predict from the checkpoint: the output_dir given now wins over the stored one (and over the default
    # <default_root_dir>/predictions); what is not given (classifier_dropout) still comes from the checkpoint.
    given = tmp_path / "given"
    predict = tiny_finetune(data_dir, tiny_bert_dir, tmp_path, f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}",
                            f"--model.init_args.output_dir={given}", "--trainer.callbacks+=tests.cli.SignalAt",
                            subcommand="predict")
    assert (given / "SST-2.tsv").is_file()
    assert not (tmp_path / "stored").exists() and not (tmp_path / "predictions").exists()
    assert predict.model.hparams.classifier_dropout == 0.3 and predict.model.output_dir == str(given)
    assert sum(isinstance(cb, SignalAt) for cb in predict.trainer.callbacks) == 1  # given once, applied once


def test_csv_logger_from_the_command_line(data_dir, tiny_bert_dir, tmp_path):
    cli = tiny_finetune(data_dir, tiny_bert_dir, tmp_path, "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                        "--trainer.limit_train_batches=1")
    from lightning.pytorch.loggers import CSVLogger

    assert isinstance(cli.trainer.logger, CSVLogger)
    metrics = (tmp_path / "finetune-glue" / "version_0" / "metrics.csv").read_text()  # save_dir and name kept
    assert "val/score" in metrics.splitlines()[0]
