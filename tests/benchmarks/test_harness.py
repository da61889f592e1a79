"""benchmarks/harness.py, the parts that can fail quietly: per-step time from the short/long difference (start-up
cancels), loud failures (a non-zero exit, a run that did fewer steps than asked), peak memory of a child and of its
own children, fresh working directories, and the override that moves a config's periodic work out of the runs.
The timed children only sleep: nothing here times litbert's own code."""
import sys

import pytest
import yaml

from benchmarks.harness import (REPO, Measured, Method, compare, lightning_precision, lightning_steps_done,
                                periodic_work_past, print_table, print_whole_runs, reference_precision,
                                reported_steps_done, run_dtype, run_method, run_timed, with_litbert_malloc)
from callbacks.cpu_kernel_cache import CAPACITY, CAPACITY_VARIABLE
from callbacks.cpu_malloc import glibc_tunables

# A run of N "steps": START seconds of start-up, then N sleeps of STEP seconds.
SLEEPER = "import sys, time; time.sleep({start}); [time.sleep({step}) for _ in range(int(sys.argv[1]))]"


def sleeper(name: str, start: float, step: float) -> Method:
    # -S (no site): the interpreter's own start-up, which differs from run to run, is small and steady.
    return Method(name, lambda steps: [sys.executable, "-S", "-c", SLEEPER.format(start=start, step=step), str(steps)])


def test_compare_recovers_the_per_step_time_and_start_up_cancels():
    fast, slow = sleeper("fast", start=0.2, step=0.1), sleeper("slow", start=1.0, step=0.2)
    measured = {m.name: m for m in compare([fast, slow], short=2, long=12, warmup=False, verbose=False)}
    # The tolerance allows 0.3 s of start-up jitter between a short and a long run (a loaded machine).
    assert measured["fast"].step_s == pytest.approx(0.1, abs=0.03)
    assert measured["slow"].step_s == pytest.approx(0.2, abs=0.03)
    assert measured["slow"].cpu_step_s < 0.02  # sleeping costs wall time, not CPU time
    # Start-up is what a run costs beyond its steps: the sleep plus the interpreter's start (same for both).
    assert 0.2 <= measured["fast"].startup_s < 1.2
    assert measured["slow"].startup_s - measured["fast"].startup_s == pytest.approx(0.8, abs=0.3)
    with pytest.raises(ValueError, match="must exceed"):
        compare([fast], short=3, long=3)


def test_every_second_repeat_runs_the_methods_in_reverse_order(tmp_path):
    log = tmp_path / "order.txt"

    def logger(name):
        script = f"import sys; open({str(log)!r}, 'a').write({name!r} + sys.argv[1] + ' ')"
        return Method(name, lambda steps: [sys.executable, "-S", "-c", script, str(steps)])

    compare([logger("A"), logger("B")], short=1, long=2, repeats=3, warmup=False, verbose=False)
    assert log.read_text().split() == ["A1", "B1", "A2", "B2", "B1", "A1", "B2", "A2", "A1", "B1", "A2", "B2"]


def test_a_failing_run_fails_loudly_with_its_output():
    with pytest.raises(SystemExit, match=r"(?s)exit 3.*the-last-words"):
        run_timed([sys.executable, "-c", "print('the-last-words'); raise SystemExit(3)"])


def test_peak_rss_of_a_child_and_of_its_own_child():
    allocate = "b = b'x' * (200 << 20)"  # bytes written, so resident (a bytearray of zeros may not be)
    assert run_timed([sys.executable, "-c", allocate]).peak_rss_mb >= 200
    nested = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {allocate!r}], check=True)"
    assert run_timed([sys.executable, "-c", nested]).peak_rss_mb >= 200


def test_every_run_starts_in_a_fresh_directory_and_must_do_its_steps():
    honest = ("import os, sys; assert not os.listdir('.'), os.listdir('.'); open('left-behind', 'w'); "
              "print(f'optimizer_steps={sys.argv[1]}')")
    method = Method("honest", lambda steps: [sys.executable, "-c", honest, str(steps)], steps_done=reported_steps_done)
    assert len(compare([method], short=1, long=2, verbose=False)) == 1  # warm-up + 2 runs, each in its own folder
    early = Method("early", lambda steps: [sys.executable, "-c", f"print('optimizer_steps={steps - 1}')"],
                   steps_done=reported_steps_done)
    with pytest.raises(SystemExit, match="did 1 optimiser steps, not 2"):
        compare([early], short=2, long=3, verbose=False)


def test_the_malloc_twin_is_the_same_run_with_litberts_process_settings_in_its_environment():
    show = ("import os, sys; print(f'optimizer_steps={sys.argv[1]}'); "
            "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''))")
    method = Method("loop", lambda steps: [sys.executable, "-c", show, str(steps)], {"A": "1"}, reported_steps_done,
                    "bf16")
    twin = with_litbert_malloc(method)
    settings = {"GLIBC_TUNABLES": glibc_tunables(), CAPACITY_VARIABLE: str(CAPACITY)}
    assert (twin.name, twin.env, twin.dtype) == ("loop_malloc", {"A": "1", **settings}, "bf16")
    assert method.env == {"A": "1"}  # the original is left as it was
    assert f"TUNABLES={glibc_tunables()}" in run_method(twin, 2).output
    assert "TUNABLES=\n" in run_method(method, 2).output


def test_steps_done_parsers():
    assert reported_steps_done(REPO, "x\noptimizer_steps=7\n") == 7
    assert reported_steps_done(REPO, "no count") == -1
    assert lightning_steps_done(REPO, "`Trainer.fit` stopped: `max_steps=12` reached.\n") == 12
    assert lightning_steps_done(REPO, "Time limit reached. Signaling Trainer to stop.") == -1


def test_periodic_work_past_moves_validation_and_step_checkpoints_only_when_inside_the_runs():
    config = REPO / "configs/mlm/roberta_small.yaml"
    assert periodic_work_past(config, 50) == ({}, [])
    override, moved = periodic_work_past(config, 300)
    assert moved == ["validation every 250 steps", "checkpoints every 100 steps"]
    assert override["trainer"]["val_check_interval"] == 301
    callbacks = override["trainer"]["callbacks"]  # restated whole: every callback of the config is still there
    shipped = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    assert [c["class_path"] for c in callbacks] == [c["class_path"] for c in shipped]
    steps = [c.get("init_args", {}).get("every_n_train_steps") for c in callbacks]
    assert [n for n in steps if n] == [301]
    assert periodic_work_past(REPO / "configs/finetune/glue.yaml", 5000) == ({}, [])  # validates per epoch


def test_print_table_has_a_ratio_column_per_baseline_and_mfu_per_dtype(capsys):
    measured = [Measured("a", 2.0, [2.0], 1024, 5, 3.5), Measured("b", 1.0, [1.0], 2048, 7, 1.9, "bf16")]
    print_table(measured, samples_per_step=32, tokens_per_sample=10, flops_per_sample=1e9,
                peak_flops={"fp32": 1e11, "bf16": 4e11}, baseline=["a", "b"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| speed vs a | speed vs b |")
    assert lines[2] == "| a | fp32 | 2.000 | 16.0 | 160 | 16.0% | 3.500 | 1.00 GB | 5 s | 1.00x | 0.50x |"
    # b's MFU is against the bf16 peak it computes in: 32 samples/s x 1 GFLOP / 400 GFLOP/s
    assert lines[3] == "| b | bf16 | 1.000 | 32.0 | 320 | 8.0% | 1.900 | 2.00 GB | 7 s | 2.00x | 1.00x |"


def test_whole_runs_are_start_up_plus_the_epochs_against_one_baseline(capsys):
    # per epoch: a 100 s with 10 s of start-up, b 40 s with 30 s of start-up; 3 epochs of 1,000 examples
    measured = [Measured("a", 100.0, [100.0], 1024, 10), Measured("b", 40.0, [40.0], 1024, 30, dtype="bf16")]
    print_whole_runs(measured, epochs=3, examples=1000, tokens_per_example=10, flops_per_sample=1e9,
                     peak={"fp32": 1e11, "bf16": 1e12}, baseline="a")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Whole 3-epoch runs, start-up included:"
    assert lines[-2] == "| a | fp32 | 310.0 s | 9.7 | 97 | 9.7% | 1.00x |"  # 3,000 examples in 310 s
    assert lines[-1] == "| b | bf16 | 150.0 s | 20.0 | 200 | 2.0% | 2.07x |"  # 310 / 150


def test_run_dtype_is_bf16_only_where_native_and_not_forced_to_fp32(monkeypatch):
    import benchmarks.harness as harness

    monkeypatch.setattr(harness, "native_bf16", lambda device: True)
    assert run_dtype("cpu") == "bf16" and run_dtype("cpu", fp32=True) == "fp32"
    assert lightning_precision("bf16") == ["--trainer.precision", "bf16-mixed"]
    assert reference_precision("bf16") == ["--bf16"] and reference_precision("fp32") == []
    monkeypatch.setattr(harness, "native_bf16", lambda device: False)
    assert run_dtype("cpu") == "fp32"
    assert lightning_precision("fp32") == ["--trainer.precision", "32-true"]
