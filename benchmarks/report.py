"""Turn pytest-benchmark JSON files into the markdown tables the README embeds.

    python -m benchmarks.report benchmarks/results/cpu-amd-epyc-2025-01-01.json [MORE.json] [-o OUT.md]
    python -m benchmarks.report --between BEFORE.json AFTER.json     # ratios between two result files

Per file: a header with the device and versions, then one row per case (mean time, throughput,
peak memory, ratio to MVSplat's published figure where one exists), then the before/after
comparisons: cases that share an `extra_info["compare"]` key (one of them `baseline`), and every
case measured in both `32-true` and `bf16-mixed`. With --between: one row per case present in both
files (same test and parameters), AFTER's time over BEFORE's, with each file's machine, threads and
load average, since ratios across runs mean little when those differ.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Case:
    name: str  # test function without the `test_` prefix
    params: str  # "device=cpu, precision=32-true, ..."
    mean_s: float
    min_s: float
    stddev_s: float
    rounds: int
    info: dict[str, Any]
    raw_params: dict[str, Any]


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"{path}: cannot read a pytest-benchmark JSON file ({error}); "
                         f"make one with `pytest benchmarks/ --benchmark-json {path}`") from error
    if "benchmarks" not in data:
        raise SystemExit(f"{path}: no 'benchmarks' key; is this a `--benchmark-json` file?")
    return data


def cases(results: dict[str, Any]) -> list[Case]:
    out = []
    for entry in results["benchmarks"]:
        raw = entry.get("params") or {}
        params = ", ".join(f"{key}={value}" for key, value in raw.items())
        name = entry["name"].split("[")[0].removeprefix("test_")
        stats = entry["stats"]
        out.append(Case(name, params, stats["mean"], stats.get("min", stats["mean"]), stats.get("stddev", 0.0),
                        stats.get("rounds", 0),
                        entry.get("extra_info") or {}, raw))
    return out


# ---- formatting ----------------------------------------------------------------------------
def format_seconds(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def format_bytes(num: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(num) >= scale:
            return f"{num / scale:.3g} {unit}"
    return f"{num:.0f} B"


def throughput(case: Case) -> str:
    items = case.info.get("items")
    if not items or case.mean_s <= 0:
        return ""
    return f"{items / case.mean_s:.3g} {case.info.get('unit', 'items')}/s"


def memory(case: Case) -> str:
    peak = case.info.get("peak_memory_bytes")
    if peak is None:
        return ""
    kind = {"cuda_max_allocated": "CUDA", "cpu_rss_peak": "RSS"}.get(case.info.get("memory_kind"), "")
    delta = case.info.get("memory_delta_bytes")
    text = f"{format_bytes(peak)} {kind}".strip()
    if kind == "RSS" and delta is not None:  # RSS includes the interpreter and torch itself
        text += f" (+{format_bytes(delta)})"
    return text


def paper_ratio(case: Case) -> str:
    parts = []
    if case.info.get("paper_seconds"):
        parts.append(f"{case.mean_s / case.info['paper_seconds']:.3g}× {case.info.get('paper_reference', '')}")
    if case.info.get("encoder_vs_paper"):  # inference cases also time the encoder/render split
        parts.append(f"encoder {case.info['encoder_vs_paper']:.3g}×, "
                     f"render {case.info['render_view_vs_paper']:.3g}×/view")
    if case.info.get("paper_memory_bytes") and case.info.get("peak_memory_bytes"):
        parts.append(f"mem {case.info['peak_memory_bytes'] / case.info['paper_memory_bytes']:.3g}×")
    return "; ".join(parts).replace(" ;", ";")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- the tables ----------------------------------------------------------------------------
def header(results: dict[str, Any], source: str) -> str:
    env = results.get("machine_info", {}).get("fabric_mvsplat", {})
    if not env:
        return f"### {source}\n"
    versions = ", ".join(f"{key} {env[key]}" for key in ("torch", "gsplat", "lightning_fabric") if key in env)
    date = results.get("datetime", "")[:10]
    return f"### {env.get('device', 'unknown device')} — {date}\n\n{versions}; source `{source}`\n"


def main_table(all_cases: list[Case]) -> str:
    rows = [[c.name, c.params, format_seconds(c.mean_s) + f" ± {format_seconds(c.stddev_s)}", str(c.rounds),
             throughput(c), memory(c), paper_ratio(c), str(c.info.get("note", ""))] for c in all_cases]
    return table(["case", "params", "mean time", "rounds", "throughput", "peak memory", "vs paper", "note"], rows)


def comparison_row(group: str, variant: str, case: Case, baseline: Case | None) -> list[str]:
    ratios = [f"{case.mean_s / baseline.mean_s:.3f}", f"{case.min_s / baseline.min_s:.3f}"] if baseline else ["", ""]
    return [group, variant, format_seconds(case.mean_s), format_seconds(case.min_s), *ratios,
            str(case.info.get("note", ""))]


def explicit_comparisons(all_cases: list[Case]) -> list[list[str]]:
    """Cases sharing extra_info['compare']: each variant's time relative to the one marked baseline."""
    groups: dict[str, list[Case]] = {}
    for case in all_cases:
        if "compare" in case.info:
            groups.setdefault(case.info["compare"], []).append(case)
    rows = []
    for group, members in groups.items():
        baseline = next((c for c in members if c.info.get("baseline")), None)
        for case in members:
            label = case.info.get("variant", case.name) + (" (baseline)" if case is baseline else "")
            rows.append(comparison_row(group, label, case, baseline))
    return rows


def precision_comparisons(all_cases: list[Case]) -> list[list[str]]:
    """Every case run at both precisions: bf16-mixed time relative to 32-true."""
    by_key: dict[tuple, dict[str, Case]] = {}
    for case in all_cases:
        precision = case.raw_params.get("precision", case.info.get("precision"))
        if precision is None:
            continue
        others = tuple(sorted((k, str(v)) for k, v in case.raw_params.items() if k != "precision"))
        by_key.setdefault((case.name, others), {})[precision] = case
    rows = []
    for (name, others), pair in by_key.items():
        if {"32-true", "bf16-mixed"} <= pair.keys():
            fp32, bf16 = pair["32-true"], pair["bf16-mixed"]
            params = ", ".join(f"{k}={v}" for k, v in others)
            rows.append(comparison_row(f"{name} ({params})" if params else name, "bf16-mixed vs 32-true",
                                       bf16, fp32))
    return rows


def render(paths: list[str | Path]) -> str:
    sections = []
    for path in paths:
        results = load_results(path)
        all_cases = cases(results)
        section = [header(results, Path(path).name), main_table(all_cases)]
        comparisons = explicit_comparisons(all_cases) + precision_comparisons(all_cases)
        if comparisons:
            section += ["", "Before / after (ratio = time / baseline time, < 1 is faster; on a shared machine "
                        "the ratio of minima is the steadier figure):", "",
                        table(["comparison", "variant", "mean time", "min time", "ratio (mean)", "ratio (min)",
                               "note"], comparisons)]
        sections.append("\n".join(section))
    return "\n\n".join(sections) + "\n"


def run_conditions(results: dict[str, Any], case: Case | None = None) -> str:
    """'cpu (..., 2 threads), OMP 1, load 0.4' for a file (or one of its cases, which may carry its own load)."""
    env = results.get("machine_info", {}).get("fabric_mvsplat", {})
    parts = [env.get("device", "unknown device")]
    if env.get("omp_num_threads"):
        parts.append(f"OMP {env['omp_num_threads']}")
    load = (case.info.get("load_average") if case else None) or env.get("load_average_at_start")
    if isinstance(load, list) and load and isinstance(load[0], list):  # per-round loads: the first round's
        load = load[0]
    if load:
        parts.append(f"load {load[0]}")
    return ", ".join(parts)


def between(before_path: str | Path, after_path: str | Path) -> str:
    """Ratios AFTER / BEFORE for the cases both files hold."""
    before, after = load_results(before_path), load_results(after_path)
    key = lambda case: (case.name, case.params)  # noqa: E731
    old = {key(case): case for case in cases(before)}
    rows = []
    for case in cases(after):
        base = old.get(key(case))
        if base is None:
            continue
        rows.append([case.name, case.params, format_seconds(base.min_s), format_seconds(case.min_s),
                     f"{case.min_s / base.min_s:.3f}", f"{case.mean_s / base.mean_s:.3f}",
                     run_conditions(before, base), run_conditions(after, case)])
    if not rows:
        raise SystemExit(f"{before_path} and {after_path} share no case (same test and parameters)")
    heading = (f"### {Path(after_path).name} vs {Path(before_path).name}\n\nratio = after / before "
               "(< 1 is faster); minima are the steadier figure on a shared machine.\n")
    return heading + "\n" + table(["case", "params", "before (min)", "after (min)", "ratio (min)", "ratio (mean)",
                                  "before: machine, threads, load", "after: machine, threads, load"], rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files (--benchmark-json output)")
    parser.add_argument("-o", "--output", help="write the markdown here instead of stdout")
    parser.add_argument("--between", action="store_true",
                        help="exactly two files, BEFORE AFTER: one row per shared case with the ratio AFTER / BEFORE")
    args = parser.parse_args(argv)
    if args.between and len(args.files) != 2:
        parser.error(f"--between takes exactly two files (BEFORE AFTER), got {len(args.files)}")
    text = between(*args.files) if args.between else render(args.files)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
