"""Encoder speed against an earlier commit: same weights, same inputs, interleaved rounds, one process.

    OMP_NUM_THREADS=2 python -m benchmarks.compare_encoder --baseline f5eba09 --rounds 3 \
        --save benchmarks/results/encoder-vs-f5eba09.json

The baseline's `fabric_mvsplat/` is extracted with `git archive REV` into a temporary folder and
imported under another name (the package imports itself relatively), so both encoders live in one
process: rounds alternate baseline / current, each round times forward and forward + backward, and
the ratio of minima is the figure (a shared machine's load moves both alike). The current encoder
loads the baseline's state dict, so the weights are identical; outputs are compared too.

Writes a pytest-benchmark-shaped JSON (`python -m benchmarks.report FILE` renders it, ratios included).
"""

import argparse
import datetime
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.conftest import environment_info, load_average, make_views
from benchmarks.test_bench_encoder import RE10K, SMALL

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"re10k": RE10K, "small": SMALL}


def import_package_at(revision: str, folder: Path, name: str):
    """`fabric_mvsplat/` as of git `revision`, imported as the top-level package `name`."""
    archive = subprocess.run(["git", "archive", revision, "fabric_mvsplat"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {revision}: git archive failed: {archive.stderr.decode().strip()}")
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(folder, filter="data")
    package = folder / "fabric_mvsplat"
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_encoder(package, cfg_dict: dict, extra: dict):
    config = importlib.import_module(f"{package.__name__}.config")
    encoder_module = importlib.import_module(f"{package.__name__}.model.encoder")
    cfg = config.from_dict(encoder_module.EncoderCostVolumeCfg, {**cfg_dict, **extra}, "model.encoder")
    return encoder_module.EncoderCostVolume(cfg)


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def loss_of(gaussians) -> torch.Tensor:
    return (gaussians.means.mean() + gaussians.harmonics.mean() + gaussians.opacities.mean()
            + gaussians.covariances.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_encoder", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="f5eba09", help="git revision to compare against (default f5eba09)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="re10k")
    parser.add_argument("--image", type=int, default=256, help="square image side (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per encoder (default 3)")
    parser.add_argument("--option", action="append", default=[],
                        help="current encoder's config key=value (e.g. attention=original); repeatable")
    parser.add_argument("--save", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    extra = dict(option.split("=", 1) for option in args.option)

    env = {**environment_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # load at the start
    with tempfile.TemporaryDirectory() as tmp:
        baseline_package = import_package_at(args.baseline, Path(tmp), "fabric_mvsplat_baseline")
        import fabric_mvsplat as current_package

        torch.manual_seed(0)
        encoders = {"baseline": build_encoder(baseline_package, CONFIGS[args.config], {})}
        encoders["current"] = build_encoder(current_package, CONFIGS[args.config], extra)
        encoders["current"].load_state_dict(encoders["baseline"].state_dict())
        context = make_views(1, 2, args.image, "cpu")

        # Outputs first (also the warm-up): same weights and inputs must give the same Gaussians.
        outputs = {}
        for name, encoder in encoders.items():
            encoder.train()
            with torch.no_grad():
                outputs[name] = encoder(context, global_step=0)
        parity = {field: (getattr(outputs["current"], field) - getattr(outputs["baseline"], field)).abs().max().item()
                  for field in ("means", "covariances", "harmonics", "opacities")}
        print(f"max |current - baseline|: {parity}", flush=True)

        times = {(name, mode): [] for name in encoders for mode in ("forward", "forward_backward")}
        loads = []
        for round_index in range(args.rounds):
            for name, encoder in encoders.items():
                loads.append(load_average())

                def forward(encoder=encoder):
                    with torch.no_grad():
                        encoder(context, global_step=0)

                def forward_backward(encoder=encoder):
                    encoder.zero_grad(set_to_none=True)
                    loss_of(encoder(context, global_step=0)).backward()

                times[name, "forward"].append(time_call(forward))
                times[name, "forward_backward"].append(time_call(forward_backward))
                print(f"round {round_index} {name}: forward {times[name, 'forward'][-1]:.2f} s, forward+backward "
                      f"{times[name, 'forward_backward'][-1]:.2f} s (load {loads[-1]})", flush=True)

    command = "python -m benchmarks.compare_encoder " + " ".join(argv if argv is not None else sys.argv[1:])
    benchmarks = []
    for (name, mode), values in times.items():
        mean = sum(values) / len(values)
        stddev = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        benchmarks.append({
            "name": f"test_encoder_vs_revision[{mode}-{name}]",
            "params": {"mode": mode, "encoder": name},
            "stats": {"min": min(values), "max": max(values), "mean": mean, "stddev": stddev, "rounds": len(values),
                      "data": values},
            "extra_info": {"compare": f"encoder/{args.config}-{args.image}/{mode}", "baseline": name == "baseline",
                           "variant": args.baseline if name == "baseline" else name + (f" {extra}" if extra else ""),
                           "items": 1, "unit": "scenes", "parity_max_abs": parity, "command": command,
                           "load_average": loads},
        })
    for mode in ("forward", "forward_backward"):
        ratio = min(times["baseline", mode]) / min(times["current", mode])
        print(f"{mode}: baseline min {min(times['baseline', mode]):.2f} s, current min "
              f"{min(times['current', mode]):.2f} s -> current is {ratio:.2f}x faster")
    if args.save:
        results = {"machine_info": {"fabric_mvsplat": env}, "datetime": datetime.datetime.now().isoformat(),
                   "benchmarks": benchmarks}
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
