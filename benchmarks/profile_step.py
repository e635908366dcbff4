"""Where a training step's time goes: torch.profiler over a few steps, split by model part.

    OMP_NUM_THREADS=1 python -m benchmarks.profile_step --steps 3 --save benchmarks/results/profile-demo-64.json
    OMP_NUM_THREADS=1 python -m benchmarks.profile_step --model re10k --size 256 --steps 1 \
        --save benchmarks/results/profile-re10k-256.json
    # an earlier version: run from its extracted folder (`-m` puts the working directory first on the path),
    # with this checkout behind it for benchmarks/; the JSON records which package ran
    git archive edaf52b fabric_mvsplat | tar -x -C /tmp/base && (cd /tmp/base && OMP_NUM_THREADS=1 \
        PYTHONPATH=/tmp/base:$OLDPWD python -m benchmarks.profile_step --steps 3 --save $OLDPWD/profile-old.json)

--model demo (default): the `+experiment=demo` model at --size (default 64, the data's resolution), trained
on real batches of a small synthetic dataset generated into a temporary folder, so the data wait is the
demo's own (JPEG decoding, view sampling, augmentation; `num_workers: 0` as the demo). --model re10k: the
full `+experiment=re10k` model (MSE + LPIPS with random VGG weights, which cost the same as the real ones)
on a random batch (no data wait).

Each step runs as the loop runs it (forward, backward, global-norm clip, Adam, scheduler), with
`record_function` labels around the data wait, each encoder part (forward hooks), the projection and the
rasterizer forward, the losses, backward, clipping and the optimizer. Backward is one autograd pass and
is not split by part by the profiler; the rasterizer's share of it is measured separately on the step's own
Gaussians (forward, and forward + backward of the same loss gradient), right after the profiled steps.
Warm-up steps run first and are not profiled. Writes the parts table, the top operators by self time,
thread count and load average (JSON), and prints both.
"""

import argparse
import dataclasses
from contextlib import nullcontext
import datetime
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.conftest import environment_info, load_average, make_batch

PART_PREFIX = "part/"
WALL_SECONDS: dict[str, float] = {}  # part -> seconds, summed over the timed steps (also without the profiler)


class part:
    """record_function(part/name) for the profiler, and the part's wall time into WALL_SECONDS."""

    def __init__(self, name: str) -> None:
        self.name, self.label = name, record_function(PART_PREFIX + name)

    def __enter__(self):
        self.label.__enter__()
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        WALL_SECONDS[self.name] = WALL_SECONDS.get(self.name, 0.0) + time.perf_counter() - self.start
        return self.label.__exit__(*exc)


def generate_small_dataset(root: Path) -> None:
    """8 training scenes of 64x64 frames, with this package's generator (its signature changed over time)."""
    from fabric_mvsplat.data import synthetic

    sizes = dict(train_scenes=8, test_scenes=1, height=64, width=64)
    if hasattr(synthetic, "SyntheticSpec"):
        synthetic.generate_synthetic_dataset(root, synthetic.SyntheticSpec(**sizes), progress=False)
    else:
        synthetic.generate_synthetic_dataset(root, **sizes, progress=False)


def config_dir() -> Path:
    """The config tree of the fabric_mvsplat package that runs (an earlier version's has other keys)."""
    import fabric_mvsplat

    return Path(fabric_mvsplat.__file__).parent / "configs"


def labelled(module: torch.nn.Module, name: str) -> list:
    """Forward pre/post hooks that wrap `module`'s forward in record_function(part/name)."""
    stack = []

    def enter(*_):
        context = part(name)
        context.__enter__()
        stack.append(context)

    def leave(*_):
        stack.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def demo_config(size: int, dataset_root: Path | None, extra: list[str] = ()):
    from hydra import compose, initialize_config_dir

    from fabric_mvsplat.config import load_config

    overrides = ["+experiment=demo", f"dataset.image_shape=[{size},{size}]"]
    if dataset_root is not None:
        overrides += [f"dataset.roots=[{dataset_root}]", "dataset.synthetic_if_missing=null"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return load_config(compose("main", overrides=[*overrides, *extra]))


def re10k_config(size: int, lpips_dir: Path, extra: list[str] = ()):
    from hydra import compose, initialize_config_dir

    from fabric_mvsplat.config import load_config

    # Batch 1 (the experiment's 14 is a GPU batch: on CPU it is 14 times the memory of one scene, ~70 GB at 256²).
    overrides = ["+experiment=re10k", "model.encoder.unimatch_weights_path=null", f"loss.lpips.weights={lpips_dir}",
                 f"dataset.image_shape=[{size},{size}]", "data_loader.train.batch_size=1"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return load_config(compose("main", overrides=[*overrides, *extra]))


def batches_from(cfg, random_batch: bool):
    """Endless batches: the demo's real data path on a small generated dataset, or one random batch."""
    if random_batch:
        batch = make_batch(cfg.data_loader.train.batch_size, cfg.dataset.view_sampler.num_context_views,
                           cfg.dataset.view_sampler.num_target_views, cfg.dataset.image_shape[0], "cpu")
        while True:
            yield batch
    from fabric_mvsplat.data import StepTracker
    from fabric_mvsplat.data.stream import TrainStream

    stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
    yield from stream


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "re10k"), default="demo")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 demo, 256 re10k)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (default 1)")
    parser.add_argument("--top", type=int, default=30, help="operators listed (default 30)")
    parser.add_argument("--no-profiler", action="store_true",
                        help="time the parts with perf_counter only (no operator table, no profiler overhead)")
    parser.add_argument("--option", action="append", default=[],
                        help="config override (a proposed config), e.g. model.encoder.gaussian_head_hidden_channels=32")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args(argv)
    size = args.size or (64 if args.model == "demo" else 256)
    env = {**environment_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "torch_threads": torch.get_num_threads()}

    import fabric_mvsplat.model.decoder.rendering as rendering
    try:  # fabric_mvsplat.build now; fabric_mvsplat.train in older versions (profiling an earlier one)
        from fabric_mvsplat.build import make_model, make_optimizer, make_scheduler
    except ModuleNotFoundError:
        from fabric_mvsplat.train import make_model, make_optimizer, make_scheduler

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model == "demo":
            generate_small_dataset(tmp / "synthetic")
            cfg = demo_config(size, tmp / "synthetic", args.option)
        else:
            from tests.lpips_test_weights import write_lpips_test_weights

            write_lpips_test_weights(tmp / "lpips", seed=0)
            cfg = re10k_config(size, tmp / "lpips", args.option)
        torch.manual_seed(0)
        model = make_model(cfg).train()
        batches = batches_from(cfg, random_batch=args.model != "demo")

        # The step as the loop runs it (optimizer as train.py makes it on CPU), its phases labelled.
        hooks = []
        encoder = model.encoder
        for name in ("backbone.backbone", "backbone.transformer", "depth_predictor", "gaussian_adapter"):
            hooks += labelled(encoder.get_submodule(name), "encoder." + name)
        captured = {}
        originals = {name: getattr(rendering, name) for name in ("project_gaussians", "rasterize_torch", "rasterize_cpu")
                     if hasattr(rendering, name)}

        def project(*a, **k):
            with part("render.project"):
                return originals["project_gaussians"](*a, **k)

        def rasterizer(name):  # the backend in use (the compiled one falls back to the torch one by itself)
            def rasterize(*a, **k):
                captured.setdefault("function", originals[name])
                captured["args"], captured["kwargs"] = a, k
                with part(f"render.{name}_forward"):
                    return originals[name](*a, **k)
            return rasterize

        rendering.project_gaussians = project
        for name in originals:
            if name.startswith("rasterize"):
                setattr(rendering, name, rasterizer(name))
        for name, loss in model.losses.items():
            hooks += labelled(loss, "loss." + name)

        fused = "fused" in inspect.signature(make_optimizer).parameters  # absent before the fused CPU Adam
        optimizer = make_optimizer(cfg.optimizer, model, **({"fused": True} if fused else {}))
        scheduler = make_scheduler(cfg.optimizer, cfg.trainer.max_steps, optimizer)

        def step(index: int) -> float:
            with part("data"):
                batch = next(batches)
            with part("forward (all)"):
                output = model(batch, index)
            with part("backward (all)"):
                output.loss.backward()
            with part("clip_grad_norm"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            with part("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            return output.loss.item()

        try:
            for index in range(args.warmup):
                step(index)
            load_before = load_average()
            wall = []
            WALL_SECONDS.clear()  # the warm-up's parts are not counted
            profiler = nullcontext() if args.no_profiler else profile(activities=[ProfilerActivity.CPU],
                                                                      record_shapes=False)
            with profiler as prof:
                for index in range(args.steps):
                    start = time.perf_counter()
                    with part("step"):
                        step(args.warmup + index)
                    wall.append(time.perf_counter() - start)
            load_after = load_average()
            rasterizer = time_rasterizer(captured, rounds=max(args.steps, 1))
        finally:
            for name, function in originals.items():
                setattr(rendering, name, function)
            for hook in hooks:
                hook.remove()

    parts = {name: seconds / args.steps for name, seconds in WALL_SECONDS.items()}
    top = []
    if prof is not None:
        averages = prof.key_averages()
        operators = sorted((event for event in averages if not event.key.startswith(PART_PREFIX)),
                           key=lambda event: event.self_cpu_time_total, reverse=True)[:args.top]
        top = [{"name": event.key, "self_s_per_step": event.self_cpu_time_total / 1e6 / args.steps,
                "calls_per_step": event.count / args.steps} for event in operators]
    command = "python -m benchmarks.profile_step " + " ".join(sys.argv[1:] if argv is None else argv)
    import fabric_mvsplat

    result = {"command": command, "package": str(Path(fabric_mvsplat.__file__).parent),  # PYTHONPATH may pick another
              "datetime": datetime.datetime.now().isoformat(), "model": args.model,
              "image_size": size, "steps": args.steps, "machine": env,
              "load_average_before_after": [load_before, load_after],
              "wall_seconds_per_step": wall, "parts_seconds_per_step": parts,
              "rasterizer_isolated_seconds": rasterizer, "top_operators_by_self_time": top,
              "profiler": not args.no_profiler,
              "note": "parts are inclusive wall time (perf_counter around record_function labels; nested: 'step' "
                      "contains the rest, 'forward (all)' the encoder, render and loss parts); backward is one "
                      "autograd pass"}
    print(format_summary(result))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.save}")


def time_rasterizer(captured: dict, rounds: int) -> dict[str, float]:
    """The last step's rasterizer call again, alone: forward, and forward + backward (min over rounds)."""
    rasterize = captured["function"]
    def leaf(value):  # tensors, and the tensors of a dataclass (ProjectedGaussians), cut from the step's graph
        if torch.is_tensor(value):
            return value.detach().requires_grad_(value.is_floating_point())
        if dataclasses.is_dataclass(value):
            return dataclasses.replace(value, **{f.name: leaf(getattr(value, f.name))
                                                 for f in dataclasses.fields(value)})
        return value

    args = [leaf(a) for a in captured["args"]]
    leaves = [t for a in args for t in ([getattr(a, f.name) for f in dataclasses.fields(a)]
                                        if dataclasses.is_dataclass(a) else [a])
              if torch.is_tensor(t) and t.requires_grad]
    weights = None
    forward, both = [], []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        with torch.no_grad():
            rasterize(*args, **captured["kwargs"])
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        image, alpha = rasterize(*args, **captured["kwargs"])
        if weights is None:
            weights = torch.randn_like(image, generator=None)
        torch.autograd.grad((image * weights).sum() + alpha.sum(), leaves, allow_unused=True)
        both.append(time.perf_counter() - start)
    return {"function": f"{rasterize.__module__}.{rasterize.__name__}",
            "forward": min(forward[1:]), "forward_backward": min(both[1:]),
            "backward_estimate": min(both[1:]) - min(forward[1:])}


def format_summary(result: dict) -> str:
    lines = [f"{result['model']} model at {result['image_size']}x{result['image_size']}, {result['steps']} profiled "
             f"steps, threads {result['machine']['torch_threads']}, load {result['load_average_before_after']}",
             f"wall per step (not profiled overhead-free): {[round(s, 3) for s in result['wall_seconds_per_step']]}",
             "part                                   s/step"]
    for name, seconds in sorted(result["parts_seconds_per_step"].items(), key=lambda item: -item[1]):
        lines.append(f"  {name:36s} {seconds:8.3f}")
    lines.append(f"rasterizer alone: {result['rasterizer_isolated_seconds']}")
    lines.append("top operators by self time           s/step   calls/step")
    for op in result["top_operators_by_self_time"]:
        lines.append(f"  {op['name'][:36]:36s} {op['self_s_per_step']:8.3f} {op['calls_per_step']:8.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
