"""configs/mlm/*.yaml through train.py: they print, run one batch on the fixtures, switch every recipe option, resume;
the FSDP config (GPU-only) parses and builds its strategy and a tiny model its wrap policy applies to."""
from pathlib import Path

import pytest

import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mlm"
TINY_MODEL = ["--model.init_args.hidden_size", "32", "--model.init_args.num_hidden_layers", "2",
              "--model.init_args.num_attention_heads", "4", "--model.init_args.intermediate_size", "64",
              "--model.init_args.max_seq_length", "64"]


@pytest.fixture
def fixture_args(tmp_path, monkeypatch, data_dir, bpe_tokenizer_dir):
    """Overrides that point a config at the fixtures; run in tmp_path so checkpoints/exports/logs land there."""
    monkeypatch.chdir(tmp_path)
    return [*TINY_MODEL, "--data.init_args.tokenizer", str(bpe_tokenizer_dir), "--data.init_args.data_dir",
            str(data_dir), "--data.init_args.max_seq_length", "64", "--data.init_args.batch_size", "4",
            "--data.init_args.eval_batch_size", "4", "--data.init_args.num_workers", "0",
            "--trainer.enable_progress_bar", "false"]


@pytest.mark.parametrize("name", ["roberta_small", "roberta_small_sop", "roberta_base", "roberta_large_fsdp"])
def test_config_prints(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(args=["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "lightning_modules.mlm.MaskedLMModule" in printed and "datamodules.text.TextCorpusDataModule" in printed


@pytest.fixture
def hub_corpus_dir(tmp_path, data_dir):
    """A local dataset folder that `datasets.load_dataset(folder, "sample-10BT")` reads as the hub's FineWeb-Edu."""
    import json

    from datamodules.corpus import iter_file_documents

    folder = tmp_path / "fineweb-edu"
    folder.mkdir()
    docs = list(iter_file_documents(data_dir / "wikitext-2" / "train.txt"))
    for i in range(2):  # two shards
        (folder / f"part{i}.jsonl").write_text("".join(json.dumps({"text": d, "id": n}) + "\n"
                                                        for n, d in enumerate(docs[i::2])))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n"
                                      "  - split: train\n    path: part*.jsonl\n---\n")
    return folder


@pytest.mark.parametrize("name", ["roberta_small", "roberta_base"])
def test_config_runs_one_batch(name, fixture_args, hub_corpus_dir):
    # roberta_base streams a hub corpus by name: here the same load_dataset call reads a local dataset folder
    hub = ["--data.init_args.dataset_name", str(hub_corpus_dir)] if name == "roberta_base" else []
    cli = train.main(args=["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--trainer.fast_dev_run", "true",
                           *fixture_args, *hub])
    module = cli.model
    assert cli.datamodule.streaming == (name == "roberta_base")
    assert module.model.config.vocab_size == cli.datamodule.vocab_size  # linked from the DataModule
    assert module.model.config.max_position_embeddings == 64 + 2
    assert cli.trainer.global_step == 1
    assert module.final_metrics["val_loss"] > 0


def test_roberta_small_sop_runs_segment_pairs_with_the_sop_head(fixture_args, tmp_path):
    """SEGMENT-PAIR + SOP through train.py: the batches carry sentence labels, the SOP head trains and is logged,
    the export is a plain RobertaForMaskedLM (no head); NSP is the same config with both options switched."""
    from transformers import AutoModelForMaskedLM

    cli = train.main(args=["fit", "--config", str(CONFIGS / "roberta_small_sop.yaml"), *fixture_args,
                           "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                           "--trainer.val_check_interval", "2"])
    assert cli.datamodule.packing == "segment_pair" and cli.model.hparams.sentence_objective == "sop"
    assert cli.trainer.global_step == 2
    logged = cli.trainer.callback_metrics
    assert {"train/sentence_loss", "train/sentence_accuracy", "val/sentence_loss", "val/sentence_accuracy"} <= set(
        logged)
    assert 0.0 <= float(logged["val/sentence_accuracy"]) <= 1.0
    export = tmp_path / "artifacts" / "mlm" / "roberta_small_sop" / "export" / "last"
    loaded = AutoModelForMaskedLM.from_pretrained(export)
    assert type(loaded).__name__ == "RobertaForMaskedLM"
    assert not any("sentence" in k for k in loaded.state_dict())
    nsp = train.main(args=["fit", "--config", str(CONFIGS / "roberta_small_sop.yaml"), *fixture_args,
                           "--trainer.fast_dev_run", "true", "--data.init_args.sentence_objective", "nsp",
                           "--model.init_args.sentence_objective", "nsp", "--data.init_args.packing", "sentence_pair"])
    assert nsp.trainer.global_step == 1 and "val_sentence_accuracy" in nsp.model.final_metrics


def test_sentence_objectives_must_agree(fixture_args):
    with pytest.raises(ValueError, match="sentence_objective=nsp but data.init_args.sentence_objective=sop"):
        train.main(args=["fit", "--config", str(CONFIGS / "roberta_small_sop.yaml"), *fixture_args,
                         "--trainer.fast_dev_run", "true", "--model.init_args.sentence_objective", "nsp"])


def test_every_recipe_switch_runs(fixture_args):
    """Static masking, DOC-SENTENCES, whole-word masking, smoothing, dense prediction, accumulation and clipping."""
    cli = train.main(args=["fit", "--config", str(CONFIGS / "roberta_small.yaml"), "--trainer.fast_dev_run", "2",
                           *fixture_args, "--data.init_args.masking", "static",
                           "--data.init_args.static_duplicates", "3", "--data.init_args.packing", "doc_sentences",
                           "--data.init_args.whole_word_mask", "true", "--data.init_args.mlm_smoothing", "0.7",
                           "--model.init_args.sparse_prediction", "false", "--trainer.accumulate_grad_batches", "2",
                           "--trainer.gradient_clip_val", "1.0"])
    masker = cli.datamodule.masker
    assert masker.static_duplicates == 3 and masker.whole_word_mask and masker.mlm_smoothing == 0.7
    assert cli.trainer.global_step == 1  # two micro-batches, one optimiser step
    assert cli.model.final_metrics["val_loss"] > 0


def test_resume_from_last_checkpoint_continues_the_step_counter(fixture_args, tmp_path):
    common = ["--config", str(CONFIGS / "roberta_small.yaml"), *fixture_args, "--trainer.limit_val_batches", "1",
              "--trainer.val_check_interval", "2"]
    # stopped at step 2 of 4 as a preempted job is (SIGTERM: PreemptionCheckpoint saves last.ckpt, exit 143)
    with pytest.raises(SystemExit) as stopped:
        train.main(args=["fit", *common, "--trainer.max_steps", "4", "--trainer.callbacks+=tests.cli.SignalAt",
                         "--trainer.callbacks.init_args.step=2"])
    last = tmp_path / "artifacts" / "mlm" / "roberta_small" / "checkpoints" / "last.ckpt"  # the config's dirpath
    assert stopped.value.code == 143 and last.is_file()
    # the same plan (max_steps 4) resumes; another one is refused (lightning_modules/optim.py, tests/test_reliability.py)
    resumed = train.main(args=["fit", *common, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 4
    assert resumed.trainer.ckpt_path == str(last)


def test_checkpoint_file_reloads_through_the_cli_and_load_from_checkpoint(fixture_args, tmp_path):
    from lightning_modules.mlm import MaskedLMModule

    args = ["--config", str(CONFIGS / "roberta_small.yaml"), *fixture_args]
    train.main(args=["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"])
    last = tmp_path / "artifacts" / "mlm" / "roberta_small" / "checkpoints" / "last.ckpt"
    # The linked data facts the module does not take (num_labels, label_names, ...) are not stored as hparams.
    assert MaskedLMModule.load_from_checkpoint(last).hparams.hidden_size == 32
    validated = train.main(args=["validate", *args, "--ckpt_path", str(last), "--trainer.limit_val_batches", "1"])
    assert validated.model.final_metrics["val_loss"] > 0


class _ArgumentsOnlyCLI(train.LitBertCLI):
    """train.py's CLI that instantiates model, data, callbacks and the strategy, but stops short of the Trainer
    (FSDPStrategy refuses a CPU accelerator): `cli.trainer` is the dict of instantiated Trainer arguments."""

    def instantiate_trainer(self, **kwargs):
        return {**self._get(self.config_init, "trainer", default={}), **kwargs}


def test_roberta_large_fsdp_config_prints_the_large_recipe(capsys):
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        train.main(args=["fit", "--config", str(CONFIGS / "roberta_large_fsdp.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model, trainer = printed["model"]["init_args"], printed["trainer"]
    assert (model["num_hidden_layers"], model["hidden_size"], model["num_attention_heads"],
            model["intermediate_size"], model["lr"]) == (24, 1024, 16, 4096, 4e-4)
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    assert trainer["strategy"]["init_args"]["auto_wrap_policy"] == [
        "transformers.models.roberta.modeling_roberta.RobertaLayer"]
    effective = (printed["data"]["init_args"]["batch_size"] * trainer["devices"] * trainer["num_nodes"]
                 * trainer["accumulate_grad_batches"])
    assert effective == 8192  # RoBERTa's 8k sequences per optimiser step


@pytest.mark.parametrize("checkpointing", [False, True])
def test_roberta_large_fsdp_strategy_and_wrap_policy_build(checkpointing, fixture_args):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.roberta.modeling_roberta import RobertaLayer

    layer = "transformers.models.roberta.modeling_roberta.RobertaLayer"
    extra = ["--trainer.strategy.init_args.activation_checkpointing_policy", f"[{layer}]"] if checkpointing else []
    cli = _ArgumentsOnlyCLI(model_class=None, datamodule_class=None, subclass_mode_model=True,
                            subclass_mode_data=True, run=False,
                            args=["--config", str(CONFIGS / "roberta_large_fsdp.yaml"), *fixture_args, *extra])
    strategy = cli.trainer["strategy"]
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and set(policy._module_classes) == {RobertaLayer}
    # The policy's classes are the layers of the model this config builds (here at the fixtures' tiny size).
    model = cli.model.model
    wrapped = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert len(wrapped) == model.config.num_hidden_layers == 2 and all(isinstance(m, RobertaLayer) for m in wrapped)
    if checkpointing:
        checkpoint_policy = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
        assert set(checkpoint_policy._module_classes) == {RobertaLayer}
    else:
        assert not strategy._activation_checkpointing_kwargs
