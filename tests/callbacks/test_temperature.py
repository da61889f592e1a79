"""TemperatureAnnealing: schedule values, applied per step, kept across a checkpoint resume."""
import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.temperature import TemperatureAnnealing, annealed_value


@pytest.mark.parametrize("schedule, progress, expected", [
    ("constant", 0.7, 4.0),
    ("linear", 0.0, 4.0), ("linear", 0.25, 3.25), ("linear", 1.0, 1.0), ("linear", 2.0, 1.0),
    ("cosine", 0.0, 4.0), ("cosine", 0.5, 2.5), ("cosine", 1.0, 1.0),
    ("exponential", 0.0, 4.0), ("exponential", 0.5, 2.0), ("exponential", 1.0, 1.0),
])
def test_schedule_values(schedule, progress, expected):
    assert annealed_value(schedule, 4.0, 1.0, progress) == pytest.approx(expected)


def test_values_at_chosen_steps():
    cb = TemperatureAnnealing("linear", t_start=8.0, t_end=2.0, total=7)
    assert [cb.value_at(i) for i in (0, 3, 6, 10)] == pytest.approx([8.0, 5.0, 2.0, 2.0])
    cb = TemperatureAnnealing("cosine", t_start=1.0, t_end=3.0, total=3)  # annealing upwards works too
    assert [cb.value_at(i) for i in (0, 1, 2)] == pytest.approx([1.0, 2.0, 3.0])
    cb = TemperatureAnnealing("exponential", t_start=8.0, t_end=1.0, total=4)
    assert cb.value_at(1) == pytest.approx(4.0) and cb.value_at(2) == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="step"), "schedule"), (dict(interval="batch"), "interval"), (dict(t_end=0.0), "positive"),
    (dict(total=0), "total"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureAnnealing(**kwargs)


class RecordingModule(pl.LightningModule):
    """A one-parameter model that records the temperature it sees in each training step."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.temperature = 99.0
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, self.temperature))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, max_steps, callback, ckpt_path=None, checkpoint=False, max_epochs=-1):
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    module = RecordingModule()
    callbacks = [callback]
    if checkpoint:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=-1,
                                                      every_n_train_steps=max_steps))
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         limit_val_batches=0, accelerator="cpu", enable_checkpointing=checkpoint)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


def test_applied_every_step_from_the_inferred_length(tmp_path):
    module, _ = fit(tmp_path, 5, TemperatureAnnealing("linear", t_start=4.0, t_end=2.0))
    assert module.seen == [(i, pytest.approx(4.0 - 0.5 * i)) for i in range(5)]


def test_resume_continues_the_schedule(tmp_path):
    expected = [annealed_value("cosine", 6.0, 1.0, i / 7) for i in range(8)]
    first, _ = fit(tmp_path, 4, TemperatureAnnealing("cosine", t_start=6.0, t_end=1.0, total=8), checkpoint=True)
    assert [t for _, t in first.seen] == pytest.approx(expected[:4])
    ckpt = tmp_path / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any(s.get("resolved_total") == 8 for s in state.values() if isinstance(s, dict))
    resumed, _ = fit(tmp_path, 8, TemperatureAnnealing("cosine", t_start=6.0, t_end=1.0, total=8), ckpt_path=ckpt)
    assert [s for s, _ in resumed.seen] == [4, 5, 6, 7]
    assert [t for _, t in resumed.seen] == pytest.approx(expected[4:])


def test_resume_keeps_the_inferred_length_of_the_first_run(tmp_path):
    # First run plans 4 steps (inferred from max_steps); the resumed run keeps that plan instead of re-inferring 8.
    fit(tmp_path, 4, TemperatureAnnealing("linear", t_start=4.0, t_end=1.0), checkpoint=True)
    resumed, _ = fit(tmp_path, 8, TemperatureAnnealing("linear", t_start=4.0, t_end=1.0),
                     ckpt_path=tmp_path / "last.ckpt")
    assert [t for _, t in resumed.seen] == pytest.approx([1.0] * 4)


def test_epoch_interval(tmp_path):
    module, _ = fit(tmp_path, -1, TemperatureAnnealing("exponential", t_start=4.0, t_end=1.0, interval="epoch"),
                    max_epochs=3)
    per_epoch = sorted({t for _, t in module.seen}, reverse=True)
    assert per_epoch == pytest.approx([4.0, 2.0, 1.0])
    assert len(module.seen) == 24


def test_module_without_the_attribute_is_a_clear_error(tmp_path):
    with pytest.raises(AttributeError, match="tau"):
        fit(tmp_path, 2, TemperatureAnnealing(attribute="tau"))
