"""The demo model's whole training step against an earlier commit: same weights, same batches, alternating steps.

    OMP_NUM_THREADS=2 python -m benchmarks.compare_step --baseline edaf52b --rounds 6 \
        --save benchmarks/results/demo-step-64-vs-edaf52b.json

Both packages live in one process (the baseline's `fabric_mvsplat/` from `git archive REV`, as in
`benchmarks.compare_encoder`), each builds the `+experiment=demo` model at --size from its own config
tree, and the current model loads the baseline's initial weights. Batches come from the demo's real data
path (a small synthetic dataset generated into a temporary folder); each round fetches one batch and
runs one full training step (forward, backward, clip at 0.5, Adam, scheduler) on the baseline and then
on the current model, or the other way round on odd rounds, so that the machine's load moves both alike.
The ratio of medians and of minima are the figures; the first round warms up and is not counted. The
first step's losses are compared too (same weights, same batch). --option changes the current model's config
(a proposed demo config); where the current demo config or --option changes a layer's shape, that layer keeps its
own initialisation, so losses then differ.
"""

import argparse
import datetime
import importlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.compare_encoder import import_package_at
from benchmarks.conftest import environment_info, load_average
from benchmarks.profile_step import generate_small_dataset


def builders(package):
    """The module holding make_model/make_optimizer/make_scheduler: `build` now, `train` in older versions."""
    try:
        return importlib.import_module(f"{package.__name__}.build")
    except ModuleNotFoundError:
        return importlib.import_module(f"{package.__name__}.train")


def demo_model(package, config_dir: Path, size: int, dataset_root: Path, extra: list[str]):
    """(model, cfg, make_optimizer, make_scheduler) of `package` (the current one or the baseline's)."""
    from hydra import compose, initialize_config_dir

    config = importlib.import_module(f"{package.__name__}.config")
    train = builders(package)
    overrides = ["+experiment=demo", f"dataset.image_shape=[{size},{size}]", f"dataset.roots=[{dataset_root}]",
                 "dataset.synthetic_if_missing=null", *extra]
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = config.load_config(compose("main", overrides=overrides))
    torch.manual_seed(0)
    return train.make_model(cfg).train(), cfg, train


def make_step(model, cfg, train):
    """One training step as `train.py` runs it on CPU (the baseline's make_optimizer may predate `fused`)."""
    fused = "fused" in inspect.signature(train.make_optimizer).parameters
    optimizer = train.make_optimizer(cfg.optimizer, model, **({"fused": True} if fused else {}))
    scheduler = train.make_scheduler(cfg.optimizer, cfg.trainer.max_steps, optimizer)
    state = {"step": 0}

    def step(batch) -> float:
        output = model(batch, state["step"])
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state["step"] += 1
        return output.loss.item()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_step", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="edaf52b")
    parser.add_argument("--size", type=int, default=64, help="training image side (default 64, the data's)")
    parser.add_argument("--rounds", type=int, default=6, help="timed steps per model (default 6)")
    parser.add_argument("--option", action="append", default=[], help="current model's config override; repeatable")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args(argv)

    env = {**environment_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "torch_threads": torch.get_num_threads()}
    import fabric_mvsplat
    from fabric_mvsplat.data import StepTracker, TrainStream

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = import_package_at(args.baseline, tmp / "baseline", "fabric_mvsplat_baseline")
        generate_small_dataset(tmp / "synthetic")
        models = {"baseline": demo_model(baseline, tmp / "baseline" / "fabric_mvsplat" / "configs", args.size,
                                         tmp / "synthetic", []),
                  "current": demo_model(fabric_mvsplat, Path(fabric_mvsplat.__file__).parent / "configs", args.size,
                                        tmp / "synthetic", args.option)}
        # Same initial weights where the layouts agree; a layer whose shape the current demo config (or --option)
        # changed keeps its own initialisation, and the first-step losses then differ.
        current_state = models["current"][0].state_dict()
        shared = {key: value for key, value in models["baseline"][0].state_dict().items()
                  if key in current_state and current_state[key].shape == value.shape}
        models["current"][0].load_state_dict(shared, strict=False)
        not_shared = sorted(set(current_state) - set(shared))
        if not_shared:
            print(f"{len(not_shared)} tensors keep their own initialisation ({not_shared[:4]} ...)")
        steps = {name: make_step(*parts) for name, parts in models.items()}
        cfg = models["current"][1]
        stream = iter(TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed))

        times = {name: [] for name in steps}
        losses = {name: [] for name in steps}
        loads = []
        for round_index in range(args.rounds + 1):  # round 0 warms up (and builds the compiled kernels)
            batch = next(stream)
            order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
            for name in order:
                loads.append(load_average())
                start = time.perf_counter()
                losses[name].append(steps[name](batch))
                seconds = time.perf_counter() - start
                if round_index:
                    times[name].append(seconds)
                print(f"round {round_index} {name}: {seconds:.2f} s, loss {losses[name][-1]:.5f} (load {loads[-1]})",
                      flush=True)

    first_loss_diff = abs(losses["current"][0] - losses["baseline"][0])
    command = "python -m benchmarks.compare_step " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {name: {"median": statistics.median(values), "min": min(values)} for name, values in times.items()}
    ratio_median = summary["baseline"]["median"] / summary["current"]["median"]
    ratio_min = summary["baseline"]["min"] / summary["current"]["min"]
    print(f"demo step {args.size}x{args.size}: baseline median {summary['baseline']['median']:.3f} s, current "
          f"{summary['current']['median']:.3f} s -> {ratio_median:.2f}x (minima: {ratio_min:.2f}x); first-step loss "
          f"|diff| {first_loss_diff:.2e}; threads {torch.get_num_threads()}, load {loads[0]} .. {loads[-1]}")
    benchmarks = []
    for name, values in times.items():
        mean = sum(values) / len(values)
        stddev = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        benchmarks.append({
            "name": f"test_demo_step_vs_revision[{name}]", "params": {"model": name},
            "stats": {"min": min(values), "max": max(values), "mean": mean, "median": statistics.median(values),
                      "stddev": stddev, "rounds": len(values), "data": values},
            "extra_info": {"compare": f"demo-step/{args.size}", "baseline": name == "baseline",
                           "variant": args.baseline if name == "baseline" else "current" + (
                               f" {args.option}" if args.option else ""),
                           "items": 1, "unit": "steps", "losses": losses[name], "command": command,
                           "load_average": loads}})
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({
            "machine_info": {"fabric_mvsplat": env}, "datetime": datetime.datetime.now().isoformat(),
            "ratio_of_medians": ratio_median, "ratio_of_minima": ratio_min, "first_step_loss_abs_diff": first_loss_diff,
            "benchmarks": benchmarks}, indent=1))
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
