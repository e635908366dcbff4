"""CPU rasterizer speed against an earlier commit: same scene, interleaved rounds, one process.

    OMP_NUM_THREADS=1 python -m benchmarks.compare_decoder --baseline f5eba09 --rounds 7 \
        --save benchmarks/results/rasterizer-64-vs-f5eba09.json

The case is benchmarks/test_bench_decoder.py's: one MVSplat-shaped scene (a Gaussian per pixel of two
64x64 context views: 8,192 Gaussians) rendered into 4 target views with backend="torch", forward
(no grad) and forward + backward (gradients of sum(color^2) w.r.t. every Gaussian field). The
baseline's package is imported from `git archive REV` as in `benchmarks.compare_encoder`; `--backend cpu`
renders the current side with the compiled CPU rasterizer instead (the baseline stays on its torch one); rounds
alternate baseline / current and the ratio of minima is the figure. Outputs are compared too.

With --demo-step the same is done for one whole training step of the demo's model (`+experiment=demo`:
encoder, rendering of its target views at --demo-size, MSE, backward, clipping, Adam), once with the
baseline's `rasterize_torch` swapped into the current decoder and once with the current one: what the
rasterizer change means for the demo's wall time.
"""

import argparse
import datetime
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.compare_encoder import import_package_at
from benchmarks.conftest import environment_info, load_average
from benchmarks.test_bench_decoder import scene


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="f5eba09")
    parser.add_argument("--size", type=int, default=64, help="context/target image side (default 64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--backend", default="torch", choices=("torch", "cpu"),
                        help="the current checkout's backend: torch (default) or cpu, the compiled rasterizer")
    parser.add_argument("--demo-step", action="store_true", help="also time a demo training step with each rasterizer")
    parser.add_argument("--demo-size", type=int, default=32, help="image side of the demo step (default 32, as in the recorded results; the demo now trains at 48)")
    args = parser.parse_args(argv)

    env = {**environment_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # load at the start
    with tempfile.TemporaryDirectory() as tmp:
        baseline = import_package_at(args.baseline, Path(tmp), "fabric_mvsplat_baseline")
        renders = {"baseline": current_signature(importlib.import_module(f"{baseline.__name__}.model.decoder").render),
                   "current": importlib.import_module("fabric_mvsplat.model.decoder").render}
        gaussians, cameras = scene(args.size, "cpu")
        leaves = [gaussians.means, gaussians.covariances, gaussians.harmonics, gaussians.opacities]
        shape = (args.size, args.size)

        backends = {renders["baseline"]: "torch", renders["current"]: args.backend}

        def forward(render):
            with torch.no_grad():
                return render(gaussians, cameras, shape, backend=backends[render], use_principal_point=True).color

        def forward_backward(render):
            # Explicit: the default changed between versions (the scene's cameras are off-centre).
            color = render(gaussians, cameras, shape, backend=backends[render], use_principal_point=True).color
            return torch.autograd.grad(color.square().sum(), leaves)

        images = {name: forward(render) for name, render in renders.items()}
        grads = {name: forward_backward(render) for name, render in renders.items()}
        parity = {"color": (images["current"] - images["baseline"]).abs().max().item()}
        for field, a, b in zip(("means", "covariances", "harmonics", "opacities"), grads["current"], grads["baseline"]):
            parity[f"grad_{field}_rel"] = ((a - b).abs().max() / b.abs().max()).item()
        print(f"max |current - baseline|: {parity}", flush=True)

        times = {(name, mode): [] for name in renders for mode in ("forward", "forward_backward")}
        loads = []
        for _ in range(args.rounds):
            for name, render in renders.items():
                loads.append(load_average())
                for mode, fn in (("forward", forward), ("forward_backward", forward_backward)):
                    start = time.perf_counter()
                    fn(render)
                    times[name, mode].append(time.perf_counter() - start)

        if args.demo_step:
            rasterizers = {"baseline": importlib.import_module(f"{baseline.__name__}.model.decoder.rasterize_torch"),
                           "current": importlib.import_module("fabric_mvsplat.model.decoder.rasterize_torch")}
            demo_times = time_demo_steps({name: current_signature(module.rasterize_torch)
                                          for name, module in rasterizers.items()},
                                         args.demo_size, args.rounds, loads)
            times.update({(name, "demo_step"): values for name, values in demo_times.items()})

    command = "python -m benchmarks.compare_decoder " + " ".join(sys.argv[1:] if argv is None else argv)
    modes = ("forward", "forward_backward", "demo_step") if args.demo_step else ("forward", "forward_backward")
    benchmarks = []
    for (name, mode), values in times.items():
        mean = sum(values) / len(values)
        stddev = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        case = f"demo-step/{args.demo_size}" if mode == "demo_step" else f"torch-rasterizer/{args.size}/{mode}"
        benchmarks.append({
            "name": f"test_rasterizer_vs_revision[{mode}-{name}]", "params": {"mode": mode, "rasterizer": name},
            "stats": {"min": min(values), "max": max(values), "mean": mean, "stddev": stddev, "rounds": len(values),
                      "data": values},
            "extra_info": {"compare": case, "baseline": name == "baseline",
                           "variant": args.baseline if name == "baseline" else f"{name} backend={args.backend}",
                           "items": 1 if mode == "demo_step" else 4, "unit": "steps" if mode == "demo_step" else "views",
                           "parity": parity, "command": command, "load_average": loads},
        })
    for mode in modes:
        ratio = min(times["baseline", mode]) / min(times["current", mode])
        print(f"{mode}: baseline min {min(times['baseline', mode]) * 1e3:.0f} ms, current min "
              f"{min(times['current', mode]) * 1e3:.0f} ms -> current is {ratio:.2f}x faster (load {loads[-1]})")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({"machine_info": {"fabric_mvsplat": env},
                                         "datetime": datetime.datetime.now().isoformat(),
                                         "benchmarks": benchmarks}, indent=1))
        print(f"wrote {args.save}")


def current_signature(function):
    """A revision's render or rasterize_torch, called as this revision calls it: render(gaussians, cameras, ...)
    and rasterize_torch(projected, opacities, features, ...) took their tensors one by one before."""
    parameters = list(inspect.signature(function).parameters)
    if function.__name__ == "render" and parameters[1] == "extrinsics":
        return lambda gaussians, cameras, *args, **kwargs: function(gaussians, *cameras, *args, **kwargs)
    if function.__name__ == "rasterize_torch" and parameters[0] == "means2d":
        return lambda p, opacities, features, *args, **kwargs: function(
            p.means2d, p.conics, opacities, features, p.depths, p.visible, p.cov2d_diag, *args, **kwargs)
    return function


def time_demo_steps(rasterizers: dict, size: int, rounds: int, loads: list) -> dict[str, list[float]]:
    """Training steps of the +experiment=demo model, alternating the rasterizer each step -> seconds per step."""
    from hydra import compose, initialize_config_dir

    import fabric_mvsplat.model.decoder.rendering as rendering
    from benchmarks.conftest import CONFIG_DIR, make_batch
    from benchmarks.test_bench_model import make_train_step
    from fabric_mvsplat.config import load_config
    from fabric_mvsplat.build import make_model

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = load_config(compose("main", overrides=["+experiment=demo", f"dataset.image_shape=[{size},{size}]"]))
    torch.manual_seed(0)
    model = make_model(cfg).train()
    batch = make_batch(cfg.data_loader.train.batch_size, cfg.dataset.view_sampler.num_context_views,
                       cfg.dataset.view_sampler.num_target_views, size, "cpu")
    train_step = make_train_step(model, "32-true", "cpu", batch)
    current = rendering.rasterize_torch
    times = {name: [] for name in rasterizers}
    try:
        for round_index in range(rounds + 1):  # the first round warms up and is not counted
            for name, rasterize in rasterizers.items():
                rendering.rasterize_torch = rasterize
                loads.append(load_average())
                start = time.perf_counter()
                loss = train_step()
                if round_index:
                    times[name].append(time.perf_counter() - start)
                assert torch.isfinite(loss), f"demo step with the {name} rasterizer: loss {loss}"
    finally:
        rendering.rasterize_torch = current
    return times


if __name__ == "__main__":
    main()
