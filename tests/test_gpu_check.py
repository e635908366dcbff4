"""`python -m benchmarks.gpu_check`: the phase runner (time limits, JSON, fallbacks) with trivial phases on CPU,
and its refusal to run without a CUDA device."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_by_path

ROOT = Path(__file__).resolve().parents[1]
gpu_check = load_by_path("benchmarks/gpu_check.py", "gpu_check")
NO_CUDA_EXIT_CODE, Phase, phase_timeout, run_phases = (gpu_check.NO_CUDA_EXIT_CODE, gpu_check.Phase,
                                                       gpu_check.phase_timeout, gpu_check.run_phases)


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


WRITE_ARGS = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


def test_each_phase_gets_its_limit_minus_what_later_phases_keep():
    phases = [Phase("a", [], limit_s=100, reserve_s=5), Phase("b", [], limit_s=50, reserve_s=10),
              Phase("c", [], limit_s=50, reserve_s=20)]
    assert phase_timeout(phases, 0, remaining_s=1000) == 100
    assert phase_timeout(phases, 0, remaining_s=60) == 30  # 60 - (10 + 20)
    assert phase_timeout(phases, 2, remaining_s=15) == 15


def test_phases_run_in_order_results_land_as_json_and_a_failure_does_not_stop_the_rest(tmp_path):
    phases = [
        Phase("first", python(WRITE_ARGS, str(tmp_path / "first.json"), "hello"), limit_s=30, reserve_s=1),
        Phase("broken", python("import sys; print('something broke'); sys.exit(4)"), limit_s=30, reserve_s=1),
        Phase("last", python(WRITE_ARGS, str(tmp_path / "last.json")), limit_s=30, reserve_s=1),
    ]
    summary = run_phases(phases, tmp_path, budget_s=120, base_env=dict(os.environ, OMP_NUM_THREADS="1"))
    records = summary["phases"]
    assert [records[name]["status"] for name in ("first", "broken", "last")] == ["ok", "failed", "ok"]
    assert records["first"]["result"] == ["hello"]
    assert records["broken"]["returncode"] == 4 and "something broke" in records["broken"]["log_tail"]
    assert not summary["all_ok"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_a_slow_phase_is_killed_with_its_children_at_its_limit(tmp_path):
    child_pid_file = tmp_path / "child.pid"
    slow = f"sleep 60 & echo $! > {child_pid_file}; wait"
    phases = [Phase("slow", ["sh", "-c", slow], limit_s=1.5, reserve_s=0.5),
              Phase("after", python(WRITE_ARGS, str(tmp_path / "after.json")), limit_s=30, reserve_s=1)]
    start = time.monotonic()
    summary = run_phases(phases, tmp_path, budget_s=60, base_env=dict(os.environ))
    assert time.monotonic() - start < 20
    assert summary["phases"]["slow"]["status"] == "timeout"
    assert summary["phases"]["after"]["status"] == "ok"
    child = int(child_pid_file.read_text())
    for _ in range(50):  # the grandchild `sleep 60` went with its process group
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the slow phase's child {child} outlived the time limit")


def test_a_spent_budget_skips_phases_and_says_why(tmp_path):
    phases = [Phase("eats_budget", ["sleep", "5"], limit_s=2, reserve_s=0.5),
              Phase("too_late", python(WRITE_ARGS, str(tmp_path / "too_late.json")), limit_s=30, reserve_s=5)]
    # eats_budget may take 6 - 5 = 1 s (too_late keeps its 5 s); what is left after it is under 5 s.
    summary = run_phases(phases, tmp_path, budget_s=6, base_env=dict(os.environ))
    assert summary["phases"]["eats_budget"]["status"] == "timeout"
    assert summary["phases"]["eats_budget"]["timeout_s"] == pytest.approx(1, abs=0.1)
    assert summary["phases"]["too_late"]["status"] == "skipped"
    assert "budget spent" in summary["phases"]["too_late"]["reason"]
    assert not (tmp_path / "too_late.json").exists()


def test_phases_after_a_failed_gsplat_build_use_the_torch_backend(tmp_path):
    phases = [Phase("gsplat_build", python("raise SystemExit(1)"), limit_s=30, reserve_s=1),
              Phase("render", python(WRITE_ARGS, str(tmp_path / "render.json")), limit_s=30, reserve_s=1,
                    uses_decoder=True)]
    summary = run_phases(phases, tmp_path, budget_s=60, base_env=dict(os.environ))
    assert summary["phases"]["render"]["result"] == ["--backend", "torch"]
    assert summary["phases"]["render"]["backend"].startswith("torch")


def test_without_cuda_it_stops_at_once_with_a_clear_message(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "out")], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == NO_CUDA_EXIT_CODE
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "out").exists()
