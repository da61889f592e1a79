"""FLOPs per batch for ThroughputMonitor: the analytic count (models/flops.py) against a hand count and against
torch's FlopCounterMode (Lightning's `measure_flops`) on tiny models, per step of every module that trains, and
through a real Trainer with ThroughputMonitor (per-batch values, train 3x vs validation 1x, flops/s and MFU logged)."""
import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities import throughput
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import RunningStage
from transformers import (AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from datamodules.masking import MLMMasker
from lightning_modules.distill import MaskedLMDistillationModule
from lightning_modules.distill_tasks import GLUEDistillationModule, QADistillationModule
from lightning_modules.mlm import MaskedLMModule, batch_size, non_pad_tokens
from models.flops import (TRAINING_FACTOR, encoder_forward_flops, forward_flops, mean_example_flops,
                          mlm_head_flops)
from models.mlm import build_masked_lm
from tests.conftest import TINY
from tests.lightning_modules.test_mlm import FixtureBlocks

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def measure_flops(model, forward_fn, loss_fn=None):
    """Lightning's measure_flops (torch's FlopCounterMode) with SDPA on its math path: the counter has no formula for
    CPU's fused attention kernel (used without dropout), and would miss the attention products."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return throughput.measure_flops(model, forward_fn, loss_fn)


def masked_batch(tokenizer, n=3, length=16, seed=0):
    """A right-padded, masked [n, length] batch (row 0 shorter: padding is counted like the hardware computes it)."""
    torch.manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    ids = ordinary[torch.randint(len(ordinary), (n, length))]
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask = torch.ones_like(ids)
    mask[0, length - 4:] = 0
    ids[0, length - 4:] = tokenizer.pad_token_id
    ids, labels = MLMMasker(tokenizer, seed=seed)(ids, mask, torch.arange(n), 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "example_index": torch.arange(n)}


def test_hand_count_on_a_tiny_roberta():
    config = RobertaConfig(vocab_size=100, **SIZE)
    b, seq, n_masked, h, ffn, v = 3, 16, 5, 32, 64, 100
    per_layer = 2 * b * seq * (4 * h * h + 2 * h * ffn) + 2 * 2 * b * seq * seq * h  # 786,432 + 98,304
    assert per_layer == 884_736
    assert encoder_forward_flops(config, b, seq) == 2 * per_layer == 1_769_472
    assert mlm_head_flops(config, n_masked) == 2 * n_masked * (h * h + h * v) == 42_240
    model = build_masked_lm(arch="roberta", vocab_size=100, pad_token_id=1, max_seq_length=32, **SIZE)
    assert forward_flops(model, b, seq, n_masked) == 1_811_712
    assert forward_flops(model, b, seq) == 1_769_472 + 2 * b * seq * (h * h + h * v)  # dense head: every position
    # the last layer at 6 query rows (models/last_layer.py): K, V at all 48 positions; Q, output, FFN, attention at 6
    trimmed_last = 2 * b * seq * 2 * h * h + 2 * 6 * (2 * h * h + 2 * h * ffn) + 2 * 2 * 6 * seq * h
    assert trimmed_last == 196_608 + 73_728 + 12_288
    assert forward_flops(model, b, seq, n_masked, last_layer_rows=6) == per_layer + trimmed_last + 42_240


@pytest.mark.parametrize("arch", ["roberta", "bert", "distilbert"])
def test_forward_and_training_match_flop_counter(arch, bpe_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    module = MaskedLMModule(vocab_size=len(tok), pad_token_id=tok.pad_token_id, arch=arch, max_seq_length=32, **SIZE)
    batch = masked_batch(tok)
    n_masked = int((batch["labels"] != -100).sum())
    assert 0 < n_masked < batch["input_ids"].numel()
    forward = measure_flops(module, lambda: module.masked_logits(batch)[0])
    # the last layer runs at the masked positions only, each row padded to the longest row's count
    rows = 3 * int((batch["labels"] != -100).sum(dim=1).max())
    assert forward == module.batch_flops(batch, "validate") == forward_flops(module.model, 3, 16, n_masked, rows)
    assert forward < forward_flops(module.model, 3, 16, n_masked)
    training = measure_flops(module, lambda: module.training_step(batch, 0), loss_fn=lambda loss: loss)
    assert training == module.batch_flops(batch, "train") == TRAINING_FACTOR * forward
    module.hparams.sparse_prediction = False  # the dense head: every position goes through the LM head
    assert measure_flops(module, lambda: module.masked_logits(batch)[0]) == module.batch_flops(batch, "validate")


@pytest.fixture
def bert_teachers(tmp_path, wordpiece_tokenizer_dir):
    """Random-init 4-layer BERT classifier and QA teachers (hidden 32), saved with the WordPiece tokenizer."""
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    out = {}
    for name, cls, extra in (("glue", BertForSequenceClassification, {"num_labels": 3}),
                             ("qa", BertForQuestionAnswering, {})):
        torch.manual_seed(0)
        model = cls(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **{**TINY, "num_hidden_layers": 4},
                               **extra))
        model.config.architectures = [cls.__name__]
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        out[name] = tmp_path / name
    return out


def task_batch(tok, with_labels: dict):
    batch = masked_batch(tok, n=4, length=12)
    batch.pop("labels")
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return {**batch, **with_labels}


@pytest.mark.parametrize("fused_lm_loss", [True, False])
@pytest.mark.parametrize("kl_positions", ["all", "masked"])
def test_general_distillation_steps_match_flop_counter(kl_positions, fused_lm_loss, tiny_roberta_dir):
    module = MaskedLMDistillationModule(teacher=str(tiny_roberta_dir), kl_positions=kl_positions,
                                        fused_lm_loss=fused_lm_loss)
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    batch = masked_batch(tok)
    training = measure_flops(module, lambda: module.training_step(batch, 0), loss_fn=lambda loss: loss)
    b, seq = batch["input_ids"].shape
    masked = int((batch["labels"] != -100).sum())
    n = int(batch["attention_mask"].sum()) if kl_positions == "all" else masked
    teacher_forward, student_forward = forward_flops(module.teacher, b, seq, n), forward_flops(module.model, b, seq, n)
    assert teacher_forward > student_forward > 0  # 4 teacher layers, 2 student layers
    # the fused terms take the MLM term's two gradient products at the masked rows apart from the KL's
    # (distill_losses.fused_kl_and_mlm): hardware FLOPs beyond the model FLOPs that batch_flops (MFU) counts
    config = module.model.config
    extra = 2 * (2 * masked * config.hidden_size * config.vocab_size) if fused_lm_loss else 0
    assert training == module.batch_flops(batch, "train") + extra == 3 * student_forward + teacher_forward + extra
    with torch.no_grad():  # as Lightning validates (the fused terms take no gradient products then)
        validation = measure_flops(module, lambda: module.validation_step(batch, 0))
    assert validation == module.batch_flops(batch, "validate")


def test_task_distillation_steps_match_flop_counter(bert_teachers):
    tok = AutoTokenizer.from_pretrained(bert_teachers["glue"])
    glue = GLUEDistillationModule(teacher=str(bert_teachers["glue"]), task_name="mnli", num_labels=3,
                                  label_names=["entailment", "neutral", "contradiction"])
    batch = task_batch(tok, {"labels": torch.tensor([0, 1, 2, 1])})
    assert measure_flops(glue, lambda: glue.training_step(batch, 0), loss_fn=lambda x: x) == glue.batch_flops(batch,
                                                                                                              "train")
    assert measure_flops(glue, lambda: glue(batch)) == glue.batch_flops(batch, "validate")  # the student only
    qa = QADistillationModule(teacher=str(bert_teachers["qa"]))
    batch = task_batch(tok, {"start_positions": torch.tensor([1, 2, 0, 3]),
                             "end_positions": torch.tensor([2, 4, 0, 3])})
    assert type(qa.model).__name__ == "DistilBertForQuestionAnswering"
    assert measure_flops(qa, lambda: qa.training_step(batch, 0), loss_fn=lambda x: x) == qa.batch_flops(batch, "train")
    assert measure_flops(qa, lambda: qa(batch).start_logits) == qa.batch_flops(batch, "test")


def test_classification_head_of_roberta_counts_the_first_token_only():
    model = RobertaForSequenceClassification(RobertaConfig(vocab_size=100, num_labels=2, **SIZE))
    ids = torch.randint(5, 100, (2, 8))
    assert measure_flops(model, lambda: model(input_ids=ids).logits) == forward_flops(model, 2, 8)


def test_mean_example_flops_counts_each_example_at_its_own_length():
    """The benchmarks' useful work per example: no padding, whatever the batch; equal lengths give a batch's mean."""
    model = RobertaForSequenceClassification(RobertaConfig(vocab_size=100, num_labels=2, **SIZE))
    ids = torch.randint(5, 100, (1, 8))
    one = measure_flops(model, lambda: model(input_ids=ids).logits)
    assert mean_example_flops(model, [8, 8, 8], factor=1) == one == forward_flops(model, 3, 8) / 3
    expected = TRAINING_FACTOR * (forward_flops(model, 1, 4) + 2 * forward_flops(model, 1, 10)) / 3
    assert mean_example_flops(model, [10, 4, 10]) == pytest.approx(expected)
    with pytest.raises(ValueError):
        mean_example_flops(model, [])


class FlopsRecorder(pl.Callback):
    """After ThroughputMonitor in the callback list: what it read, and the count made here from the batch itself."""

    def __init__(self):
        self.seen = {"train": [], "validate": []}

    def _record(self, stage, pl_module, batch):
        b, seq = batch["input_ids"].shape
        masked = batch["labels"] != -100  # the last layer runs at the masked positions (padded to the longest row)
        forward = forward_flops(pl_module.model, b, seq, int(masked.sum()), b * int(masked.sum(dim=1).max()))
        self.seen[stage].append((pl_module.flops_per_batch, forward * (3 if stage == "train" else 1)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record("train", pl_module, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._record("validate", pl_module, batch)


def test_throughput_monitor_reads_the_flops_of_each_batch(tmp_path, bpe_tokenizer_dir, data_dir, monkeypatch):
    import lightning.pytorch.callbacks.throughput_monitor as throughput_monitor

    # CPU has no peak-FLOPs entry (get_available_flops -> None: flops/s is logged, MFU is not); pretend 1 TFLOP/s.
    monkeypatch.setattr(throughput_monitor, "get_available_flops", lambda device, dtype: 10**12)
    data = FixtureBlocks(bpe_tokenizer_dir, data_dir / "wikitext-2" / "train.txt", batch_size=4)
    module = MaskedLMModule(vocab_size=data.vocab_size, pad_token_id=data.pad_token_id, max_seq_length=32, **SIZE)
    assert module.flops_per_batch is None  # before any batch (the monitor only checks that the attribute exists)
    monitor = ThroughputMonitor(batch_size_fn=batch_size, length_fn=non_pad_tokens, window_size=2)
    recorder = FlopsRecorder()
    trainer = pl.Trainer(accelerator="cpu", max_steps=5, limit_val_batches=3, val_check_interval=5,
                         log_every_n_steps=1, num_sanity_val_steps=0, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor, recorder],
                         logger=CSVLogger(tmp_path), default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    for stage in ("train", "validate"):
        read, counted = zip(*recorder.seen[stage])
        assert read == counted, stage
    train_read = [r for r, _ in recorder.seen["train"]]
    assert len(set(train_read)) > 1, "the masked-token count changes from batch to batch, so must the FLOPs"
    assert list(monitor._throughputs[RunningStage.TRAINING]._flops) == train_read[-2:]
    assert list(monitor._throughputs[RunningStage.VALIDATING]._flops) == [r for r, _ in recorder.seen["validate"]][-2:]
    with open(trainer.logger.experiment.metrics_file_path) as handle:
        rows = list(csv.DictReader(handle))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    for key in ("train/device/flops_per_sec", "train/device/mfu", "train/device/items_per_sec",
                "validate/device/flops_per_sec"):
        assert key in logged, (key, sorted(logged))
    mfu = [float(row["train/device/mfu"]) for row in rows if row.get("train/device/mfu")]
    flops_per_sec = [float(row["train/device/flops_per_sec"]) for row in rows if row.get("train/device/flops_per_sec")]
    assert mfu[-1] == pytest.approx(flops_per_sec[-1] / 10**12)


@pytest.mark.parametrize("config", ["mlm/roberta_small.yaml", "mlm/roberta_base.yaml", "mlm/roberta_large_fsdp.yaml",
                                    "distill/roberta_general.yaml", "distill/glue.yaml", "distill/squad.yaml"])
def test_pretraining_and_distillation_configs_monitor_throughput(config):
    import yaml
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / config
    callbacks = yaml.safe_load(path.read_text())["trainer"]["callbacks"]
    monitors = [c["init_args"] for c in callbacks if c["class_path"] == "lightning.pytorch.callbacks.ThroughputMonitor"]
    assert len(monitors) == 1, config
    assert monitors[0]["batch_size_fn"] == "lightning_modules.mlm.batch_size"
    assert monitors[0]["length_fn"] == "lightning_modules.mlm.non_pad_tokens"
