"""Progress a log file shows (`step N/total` and an ETA) and the start-up line on a busy machine."""

import os
import re
from pathlib import Path

import pytest

from fabric_mvsplat import progress
from fabric_mvsplat.errors import UserError
from loop_fixtures import compose_cfg, tiny_cfg, train_tiny


def test_durations_read_as_hours_minutes_seconds():
    assert [progress.format_duration(s) for s in (0, 7, 125, 3725, 36000)] == ["0s", "7s", "2m05s", "1h02m", "10h00m"]


def test_eta_from_the_mean_step_time_since_the_run_started():
    now = [100.0]
    clock = progress.StepClock(start_step=200, total=1400, clock=lambda: now[0])  # resumed at step 200
    assert clock.step_of_total(200) == "step 200/1400" and clock.eta(200) == ""
    now[0] += 50.0  # 10 steps at 5 s
    assert clock.eta(210) == "ETA 1h39m (5.00 s/step)"  # 1190 steps left
    assert progress.StepClock(0, None).step_of_total(5) == "step 5" and progress.StepClock(0, None).eta(5) == ""


def test_training_log_lines_carry_step_of_total_and_eta(tmp_path, capsys):
    train_tiny(tiny_cfg(**{"trainer.max_steps": 4, "trainer.val_check_interval": "null"}), tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if ": loss " in line]
    assert [line.split(":")[0] for line in lines] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert all(re.search(r" \| ETA (\d+h)?(\d+m)?\d+s? \([0-9.]+ s/step\) \| ", line) for line in lines), lines


@pytest.mark.parametrize("load, cores, advised", [(0.3, 2, False), (2.0, 2, False), (7.9, 2, True), (9.0, 16, False)])
def test_advice_only_when_the_load_exceeds_the_cores(monkeypatch, load, cores, advised):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(progress, "usable_cores", lambda: cores)
    advice = progress.advise_if_busy()
    assert (advice is not None) == advised
    if advised:
        assert f"load average {load:.1f} on {cores} cores" in advice and "OMP_NUM_THREADS=1" in advice
        assert "\n" not in advice


def test_no_load_average_no_advice(monkeypatch):
    monkeypatch.delattr(os, "getloadavg")  # Windows
    assert progress.advise_if_busy() is None


def test_a_run_on_a_busy_machine_says_so_at_start_up(tmp_path, monkeypatch, capsys):
    """train.run prints the line before any work (here the run then stops: its folder holds another run)."""
    from fabric_mvsplat.train import run

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch_0-step_5.ckpt").write_bytes(b"")
    cfg = compose_cfg(["+experiment=demo", f"output_dir={tmp_path}"])
    for load, printed in ((99.0, True), (0.0, False)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        with pytest.raises(UserError, match="already holds checkpoints"):
            run(cfg, Path(tmp_path))
        err = capsys.readouterr().err
        assert ("fabric_mvsplat: the machine is busy: load average 99.0 on" in err) == printed, err
        assert len([line for line in err.splitlines() if "busy" in line]) == int(printed)
