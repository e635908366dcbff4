"""`python -m benchmarks.report` turns pytest-benchmark JSON into the README's markdown table."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_by_path

ROOT = Path(__file__).resolve().parents[1]


def load_report_module():
    return load_by_path("benchmarks/report.py", "bench_report")


def entry(name: str, params: dict, mean: float, extra: dict) -> dict:
    return {"name": f"test_{name}[{'-'.join(map(str, params.values()))}]", "params": params,
            "stats": {"mean": mean, "min": mean * 0.9, "stddev": mean / 10, "rounds": 5}, "extra_info": extra}


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    data = {
        "datetime": "2025-01-02T03:04:05",
        "machine_info": {"fabric_mvsplat": {"device": "cpu (Test CPU, 2 threads)", "torch": "2.13.0+cpu",
                                            "gsplat": "1.5.3", "lightning_fabric": "2.6.6"}},
        "benchmarks": [
            entry("inference", {"device": "cpu", "precision": "32-true"}, 0.088,
                  {"items": 1, "unit": "scenes", "paper_seconds": 0.044, "paper_reference": "scene",
                   "peak_memory_bytes": 1_720_000_000, "memory_delta_bytes": 300_000_000,
                   "memory_kind": "cpu_rss_peak", "paper_memory_bytes": 860_000_000}),
            entry("inference", {"device": "cpu", "precision": "bf16-mixed"}, 0.066,
                  {"items": 1, "unit": "scenes", "paper_seconds": 0.044, "paper_reference": "scene"}),
            entry("loop_fabric", {"steps": 10}, 1.02, {"compare": "loop/10", "variant": "fabric"}),
            entry("loop_bare", {"steps": 10}, 1.0, {"compare": "loop/10", "variant": "bare", "baseline": True}),
        ],
    }
    path = tmp_path / "cpu-test-2025-01-02.json"
    path.write_text(json.dumps(data))
    return path


def test_table_has_one_row_per_case_with_time_throughput_memory_and_paper_ratio(results_file):
    text = load_report_module().render([results_file])
    lines = text.splitlines()
    assert lines[0] == "### cpu (Test CPU, 2 threads) — 2025-01-02"
    assert "torch 2.13.0+cpu, gsplat 1.5.3, lightning_fabric 2.6.6" in text
    header = next(line for line in lines if line.startswith("| case"))
    assert header.split("|")[1:-1] == [" case ", " params ", " mean time ", " rounds ", " throughput ",
                                       " peak memory ", " vs paper ", " note "]
    row = next(line for line in lines if "precision=32-true" in line and line.startswith("| inference"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[1] == "device=cpu, precision=32-true"
    assert cells[2] == "88 ms ± 8.8 ms"
    assert cells[4] == "11.4 scenes/s"  # 1 / 0.088
    assert cells[5] == "1.72 GB RSS (+300 MB)"
    assert cells[6] == "2× scene; mem 2×"  # 0.088 / 0.044, 1.72 GB / 0.86 GB
    assert sum(line.startswith("| loop_") for line in lines) == 2


def test_comparisons_give_ratio_to_baseline_and_bf16_to_fp32(results_file):
    text = load_report_module().render([results_file])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")]
    loop = {row[1]: (row[4], row[5]) for row in rows if row[0] == "loop/10"}
    assert loop == {"fabric": ("1.020", "1.020"), "bare (baseline)": ("1.000", "1.000")}
    bf16 = next(row for row in rows if row[1] == "bf16-mixed vs 32-true")
    assert bf16[0] == "inference (device=cpu)"
    assert bf16[2:6] == ["66 ms", "59.4 ms", "0.750", "0.750"]  # 0.066 / 0.088


def test_command_line_writes_markdown_and_rejects_non_benchmark_json(results_file, tmp_path):
    out = tmp_path / "table.md"
    subprocess.run([sys.executable, "-m", "benchmarks.report", str(results_file), "-o", str(out)],
                   cwd=ROOT, check=True)
    assert "| inference | device=cpu, precision=bf16-mixed |" in out.read_text()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "benchmarks"}))
    failed = subprocess.run([sys.executable, "-m", "benchmarks.report", str(bad)], cwd=ROOT,
                            capture_output=True, text=True)
    assert failed.returncode != 0
    assert "bad.json" in failed.stderr and "--benchmark-json" in failed.stderr


def test_between_two_files_gives_after_over_before_with_threads_and_load(results_file, tmp_path):
    before = json.loads(results_file.read_text())
    before["machine_info"]["fabric_mvsplat"].update(omp_num_threads="1", load_average_at_start=[0.5, 0.4, 0.3])
    after = json.loads(json.dumps(before))
    for entry_ in after["benchmarks"]:
        entry_["stats"] = {key: value / 2 if key in ("mean", "min") else value for key, value in entry_["stats"].items()}
    after["benchmarks"] = after["benchmarks"][:3]  # a case only BEFORE has is left out
    after["benchmarks"][0]["extra_info"]["load_average"] = [3.5, 2.0, 1.0]
    before_path, after_path = tmp_path / "before.json", tmp_path / "after.json"
    before_path.write_text(json.dumps(before))
    after_path.write_text(json.dumps(after))
    text = load_report_module().between(before_path, after_path)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")]
    rows = [row for row in rows if row[0] != "case"]
    assert len(rows) == 3
    first = rows[0]
    assert first[:2] == ["inference", "device=cpu, precision=32-true"]
    assert first[4:6] == ["0.500", "0.500"]  # halved times
    assert first[6] == "cpu (Test CPU, 2 threads), OMP 1, load 0.5"
    assert first[7] == "cpu (Test CPU, 2 threads), OMP 1, load 3.5"  # the case's own load wins

    failed = subprocess.run([sys.executable, "-m", "benchmarks.report", "--between", str(before_path)], cwd=ROOT,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "exactly two files" in failed.stderr


@pytest.mark.parametrize("disable, workers", [(True, True), (False, False)])
def test_timed_benchmark_runs_leave_out_the_xdist_workers(disable, workers):
    """pyproject's addopts start pytest-xdist workers, under which pytest-benchmark cannot time: the smoke run
    (--benchmark-disable) keeps them, a timed run drops them (benchmarks/conftest.py). No test matches `-k`, so
    this only starts pytest."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_bench_data.py",
               "-k", "no_such_case", *(["--benchmark-disable"] if disable else [])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]  # 5: nothing selected
    assert ("bringing up nodes" in result.stdout) == workers, result.stdout[-2000:]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="ATEN_CPU_CAPABILITY=avx2 names an x86 instruction set")
def test_result_files_record_which_cpu_kernels_ran():
    """A timing under the AVX2 kernels (the slower CPUs' path, emulated on a newer CPU) says so in its file."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    code = "import json; from benchmarks.conftest import environment_info; e = environment_info(); " \
           "print(json.dumps([e['aten_cpu_capability'], e['onednn_max_cpu_isa']]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == ["AVX2", "AVX2"]
