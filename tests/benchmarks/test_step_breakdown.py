"""benchmarks/step_breakdown.py: the window callback, the grouping of operators and the floors of the report."""
import json

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from benchmarks.step_breakdown import ADAMW_BYTES_PER_PARAMETER, StepProfile, by_kind, kind_of, report


def test_operators_fall_into_their_kind_of_work():
    assert kind_of("aten::addmm") == kind_of("aten::bmm") == "matrix products"
    assert kind_of("aten::_fused_adamw_") == kind_of("aten::_foreach_mul_") == "optimiser"
    assert kind_of("aten::_to_copy") == "casts and copies"
    assert kind_of("aten::fill_") == "zero fills"
    assert kind_of("aten::random_") == "random draws (dropout)"
    assert kind_of("aten::gelu_backward") == "other operators"


def test_by_kind_sums_self_time_and_flops_per_step_and_skips_ranges():
    operators = {"aten::mm": [4000.0, 8, 8e9], "aten::addmm": [2000.0, 4, 4e9], "aten::fill_": [1000.0, 2, 0],
                 "Optimizer.step#AdamW.step": [9000.0, 2, 0], "aten::gelu": [500.0, 2, 0]}
    kinds = by_kind(operators, steps=2)
    assert kinds["matrix products"] == {"ms": 3.0, "flops": 6e9}
    assert kinds["zero fills"]["ms"] == 0.5 and kinds["other operators"]["ms"] == 0.25
    assert "optimiser" not in kinds  # the record_function range is not an operator


def test_report_sets_the_floor_against_the_unprofiled_step():
    profiled = {"steps": 10, "wall_s": 2.0, "minor_faults": 5000, "trainable_parameters": 1_000_000,
                "operators": {"aten::mm": [500_000.0, 10, 1e11], "aten::_fused_adamw_": [100_000.0, 10, 0]}}
    timed = {"steps": 10, "wall_s": 1.0, "minor_faults": 0}
    text = report(profiled, timed, peak_flops=1e11, bandwidth=2.8e10, dtype="bf16")
    assert "step time without the profiler: 100.0 ms; under it 200.0 ms" in text
    assert "minor page faults per step: 0 without the profiler, 500 under it" in text
    # 1e10 FLOP a step at 1e11 FLOP/s: 100 ms; the optimiser's 28 MB in its measured 10 ms: 2.8 GB/s
    assert "| matrix products | 50.0 | 83% | 10.0 GFLOP: 100.0 ms at the bf16 peak (200% of peak) |" in text
    assert f"1.0M parameters x {ADAMW_BYTES_PER_PARAMETER} B: 2.8 GB/s (copy bandwidth 28.0 GB/s)" in text
    assert "the optimiser's pass as measured): 110.0 ms, 110% of the unprofiled step" in text


@pytest.mark.parametrize("profile", [True, False])
def test_step_profile_writes_the_window_with_the_matmul_flops(tmp_path, profile):
    output = tmp_path / "window.json"
    trainer = pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[StepProfile(1, 3, str(output), profile=profile)],
                         default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    window = json.loads(output.read_text())
    assert window["steps"] == 3 and window["wall_s"] > 0 and window["minor_faults"] >= 0
    assert window["trainable_parameters"] == 32 * 2 + 2  # BoringModel: Linear(32, 2)
    if profile:
        self_us, calls, flops = window["operators"]["aten::addmm"]  # the forward of Linear(32, 2), batches of 1
        assert calls == 3 and flops == 3 * 2 * 1 * 32 * 2 and self_us > 0
    else:
        assert window["operators"] == {}
