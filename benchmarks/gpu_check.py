"""One-shot verification of the CUDA path on one GPU, offline, in under 8 minutes:

    python -m benchmarks.gpu_check --out DIR

Phases, each a subprocess with its own time limit (its whole process group is killed when it runs
over, so one slow phase cannot eat the others), in this order:
  gsplat_build    build (or load) gsplat's CUDA kernels into DIR/torch_extensions, timed
  cuda_tests      pytest on the decoder's tests, the CUDA ones included (junit XML -> JSON)
  gsplat_vs_torch gsplat vs the torch backend at 256x256, 2 MVSplat-shaped scenes: images, depth, gradients
  synthetic_data  a small synthetic dataset for the CLI runs
  train_32-true, train_bf16-mixed, train_16-mixed
                  3 training steps each through the real CLI (`python -m fabric_mvsplat.train +experiment=demo`)
  test_mode       the CLI's test mode on the 32-true run's checkpoint
  inference       encoder + render per scene, full re10k model, 256x256, 2 context views (paper: 0.044 s)
  train_memory    peak memory of one training step at 256x256, batch 1, 2, 4, extrapolated to 14
                  (the original trained batch 14 on 80 GB A100s)
Every phase writes DIR/<phase>.json and DIR/logs/<phase>.log; DIR/summary.json (rewritten after each
phase) lists status, wall time and limit of all. If gsplat fails to build, the phases after it run with
model.decoder.backend=torch and say so. On a machine without CUDA it exits at once with code 3.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA_EXIT_CODE = 3
DEFAULT_BUDGET_S = 470.0  # 8 minutes minus start-up and summary
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
IMAGE = 256
ORIGINAL_BATCH, ORIGINAL_MEMORY_BYTES = 14, 80e9  # the original's re10k training: batch 14 on 80 GB A100s


@dataclass
class Phase:
    """One subprocess: it gets min(limit_s, what the budget can spare after the later phases' reserve_s)."""

    name: str
    command: list[str]
    limit_s: float
    reserve_s: float
    uses_decoder: bool = False  # gets --backend torch appended when gsplat could not be built
    env: dict[str, str] = field(default_factory=dict)


# ---- the runner (no CUDA needed; tests/test_gpu_check.py runs it with trivial phases) --------------------
def phase_timeout(phases: list[Phase], index: int, remaining_s: float) -> float:
    """The time phase `index` may take: its own limit, minus what the phases after it must keep."""
    later_reserve = sum(phase.reserve_s for phase in phases[index + 1:])
    return min(phases[index].limit_s, remaining_s - later_reserve)


def run_subprocess(command: list[str], timeout_s: float, env: dict[str, str], log_path: Path) -> tuple[int | None, float]:
    """Run in its own session; on timeout kill its whole process group. -> (return code or None, wall seconds)."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    return code, time.monotonic() - start


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_phases(phases: list[Phase], out_dir: Path, budget_s: float, base_env: dict[str, str] | None = None,
               gsplat_phase: str = "gsplat_build", clock: Callable[[], float] = time.monotonic) -> dict:
    """Run the phases in order within budget_s; returns (and keeps writing) DIR/summary.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    env = {**(base_env if base_env is not None else os.environ)}
    summary: dict = {"budget_s": budget_s, "phases": {}}
    start = clock()
    gsplat_ok = True
    for index, phase in enumerate(phases):
        remaining = budget_s - (clock() - start)
        timeout = phase_timeout(phases, index, remaining)
        record: dict = {"limit_s": phase.limit_s}
        if timeout < phase.reserve_s or timeout <= 0:
            record.update(status="skipped", reason=f"budget spent: {remaining:.0f} s left, later phases keep "
                                                   f"{sum(p.reserve_s for p in phases[index + 1:]):.0f} s")
        else:
            command = list(phase.command)
            if phase.uses_decoder and not gsplat_ok:
                command += ["--backend", "torch"]
                record["backend"] = "torch (gsplat did not build)"
            log = out_dir / "logs" / f"{phase.name}.log"
            print(f"gpu_check: {phase.name} (up to {timeout:.0f} s) ...", file=sys.stderr, flush=True)
            code, wall = run_subprocess(command, timeout, {**env, **phase.env}, log)
            status = "timeout" if code is None else ("ok" if code == 0 else "failed")
            record.update(status=status, timeout_s=round(timeout, 1), wall_s=round(wall, 2), returncode=code)
            if status != "ok":
                record["log_tail"] = tail(log)
            result = out_dir / f"{phase.name}.json"
            if result.is_file():
                try:
                    record["result"] = json.loads(result.read_text())
                except ValueError as error:
                    record["result_error"] = f"{result.name} is not JSON: {error}"
            print(f"gpu_check: {phase.name}: {status} in {wall:.1f} s", file=sys.stderr, flush=True)
        if phase.name == gsplat_phase:
            gsplat_ok = record["status"] == "ok"
        summary["phases"][phase.name] = record
        summary["elapsed_s"] = round(clock() - start, 2)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["all_ok"] = all(record["status"] == "ok" for record in summary["phases"].values())
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---- the phases (each runs in its own process: `python -m benchmarks.gpu_check --phase NAME --out DIR`) --
def default_phases(out_dir: Path) -> list[Phase]:
    def me(name: str) -> list[str]:
        return [sys.executable, "-m", "benchmarks.gpu_check", "--phase", name, "--out", str(out_dir)]

    phases = [
        Phase("gsplat_build", me("gsplat_build"), limit_s=240, reserve_s=60),
        Phase("cuda_tests", me("cuda_tests"), limit_s=90, reserve_s=30),
        Phase("gsplat_vs_torch", me("gsplat_vs_torch"), limit_s=60, reserve_s=20),
        Phase("synthetic_data", me("synthetic_data"), limit_s=30, reserve_s=10),
    ]
    phases += [Phase(f"train_{p}", me(f"train_{p}"), limit_s=60, reserve_s=20, uses_decoder=True) for p in PRECISIONS]
    phases += [
        Phase("test_mode", me("test_mode"), limit_s=60, reserve_s=20, uses_decoder=True),
        Phase("inference", me("inference"), limit_s=45, reserve_s=15, uses_decoder=True),
        Phase("train_memory", me("train_memory"), limit_s=60, reserve_s=20, uses_decoder=True),
    ]
    return phases


def write_result(out_dir: Path, name: str, result: dict) -> None:
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))


def phase_gsplat_build(out_dir: Path, backend: str) -> dict:
    from fabric_mvsplat.model.decoder.gsplat_build import build_directory, extension_is_built, load_gsplat_kernels
    from fabric_mvsplat.model.decoder.gsplat_build import missing_build_tools, nvcc_version

    built_before = extension_is_built()
    info = {"build_directory": str(build_directory()), "already_built": built_before, "nvcc": nvcc_version(),
            "max_jobs": os.environ.get("MAX_JOBS"), "cpu_count": os.cpu_count(), "missing_tools": missing_build_tools()}
    info["seconds"] = load_gsplat_kernels()
    import gsplat
    import torch

    info.update(gsplat=gsplat.__version__, torch=torch.__version__, torch_cuda=torch.version.cuda,
                device=torch.cuda.get_device_name(0))
    return info


def phase_cuda_tests(out_dir: Path, backend: str) -> dict:
    import xml.etree.ElementTree as ElementTree

    junit = out_dir / "cuda_tests.xml"
    tests = ["tests/test_decoder_cuda.py", "tests/test_decoder.py", "tests/test_decoder_gsplat_cpu.py",
             "tests/test_gsplat_build.py", "tests/test_rasterizer.py"]
    # -n 0: one process (no pytest-xdist workers), so one CUDA context and one gsplat build.
    code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "-rs", *tests], cwd=ROOT).returncode
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failed = [case.get("classname", "") + "::" + case.get("name", "") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    skipped = [case.get("name", "") for case in suite.iter("testcase") if case.find("skipped") is not None]
    result = {"returncode": code, "tests": int(suite.get("tests", 0)), "failures": int(suite.get("failures", 0)),
              "errors": int(suite.get("errors", 0)), "skipped": skipped, "failed": failed, "files": tests}
    if code != 0:
        write_result(out_dir, "cuda_tests", result)
        raise SystemExit(1)
    return result


def phase_gsplat_vs_torch(out_dir: Path, backend: str) -> dict:
    """Two MVSplat-shaped scenes (one Gaussian per context pixel, 2 x 256 x 256 each), 4 target views."""
    import torch

    from fabric_mvsplat.model.decoder import render
    from tests.synthetic_scenes import look_at_cameras, pixel_aligned_scene
    from fabric_mvsplat.types import Gaussians

    torch.set_float32_matmul_precision("high")  # as training
    generator = torch.Generator().manual_seed(0)
    scenes = pixel_aligned_scene(2, 2, (IMAGE, IMAGE), generator)
    extrinsics, intrinsics = look_at_cameras(2, 4, generator)
    near, far = torch.full((2, 4), 1.0), torch.full((2, 4), 100.0)
    cameras = [t.cuda() for t in (extrinsics, intrinsics, near, far)]
    weights = torch.randn(2, 4, 3, IMAGE, IMAGE, generator=generator).cuda()
    fields = ("means", "covariances", "harmonics", "opacities")
    outputs = {}
    for name in ("torch", "gsplat"):
        leaves = [getattr(scenes, f).cuda().requires_grad_(True) for f in fields]
        torch.cuda.synchronize()
        start = time.perf_counter()
        output = render(Gaussians(*leaves), cameras, (IMAGE, IMAGE), "depth", backend=name)
        loss = (output.color * weights).sum() + 0.01 * output.depth.sum()
        grads = torch.autograd.grad(loss, leaves)
        torch.cuda.synchronize()
        outputs[name] = (output.color, output.depth, grads, time.perf_counter() - start)
    color_t, depth_t, grads_t, seconds_t = outputs["torch"]
    color_g, depth_g, grads_g, seconds_g = outputs["gsplat"]
    color_error, depth_error = (color_g - color_t).abs(), (depth_g - depth_t).abs()
    result = {
        "scenes": 2, "gaussians_per_scene": int(scenes.means.shape[1]), "target_views": 4, "image": IMAGE,
        "color_max_abs_diff": color_error.max().item(), "color_fraction_within_1e-4": (color_error <= 1e-4).float().mean().item(),
        "depth_max_abs_diff": depth_error.max().item(), "depth_fraction_within_1e-4": (depth_error <= 1e-4).float().mean().item(),
        "color_std": color_t.std().item(), "seconds_forward_backward": {"torch": seconds_t, "gsplat": seconds_g},
        "gradients": {},
    }
    for name, a, b in zip(fields, grads_t, grads_g):
        if name == "covariances":
            a, b = 0.5 * (a + a.transpose(-1, -2)), 0.5 * (b + b.transpose(-1, -2))
        result["gradients"][name] = {"norm_relative": ((a - b).norm() / a.norm()).item(),
                                     "max_relative": ((a - b).abs().max() / a.abs().max()).item()}
    return result


def synthetic_root(out_dir: Path) -> Path:
    return out_dir / "synthetic"


def phase_synthetic_data(out_dir: Path, backend: str) -> dict:
    from fabric_mvsplat.data.synthetic import SyntheticSpec, generate_synthetic_dataset

    generate_synthetic_dataset(synthetic_root(out_dir), SyntheticSpec(train_scenes=4, test_scenes=3, frames=24,
                                                                         height=64, width=64, seed=0), progress=False)
    return {"root": str(synthetic_root(out_dir))}


def cli_overrides(out_dir: Path, backend: str, *extra: str) -> list[str]:
    return ["+experiment=demo", f"dataset.roots=[{synthetic_root(out_dir)}]", "dataset.image_shape=[64,64]",
            "trainer.accelerator=cuda", "trainer.devices=1", f"model.decoder.backend={backend}", *extra]


def run_cli(overrides: list[str], log_name: str, out_dir: Path) -> dict:
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "fabric_mvsplat.train", *overrides], cwd=ROOT,
                             capture_output=True, text=True)
    (out_dir / "logs" / f"{log_name}.cli.log").write_text(process.stdout + process.stderr)
    result = {"returncode": process.returncode, "seconds": time.perf_counter() - start, "overrides": overrides,
              "output_tail": (process.stdout + process.stderr).splitlines()[-15:]}
    if process.returncode != 0:
        write_result(out_dir, log_name, result)
        raise SystemExit(1)
    return result


def phase_train(out_dir: Path, backend: str, precision: str) -> dict:
    run_dir = out_dir / "runs" / precision
    result = run_cli(cli_overrides(out_dir, backend, f"output_dir={run_dir}", f"trainer.precision={precision}",
                                   "trainer.max_steps=3", "trainer.val_check_interval=3",
                                   "checkpointing.every_n_train_steps=3", "train.print_log_every_n_steps=1",
                                   "train.video_frames=3"), f"train_{precision}", out_dir)
    result["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    result["backend"] = backend
    return result


def phase_test_mode(out_dir: Path, backend: str) -> dict:
    checkpoints = sorted((out_dir / "runs" / "32-true" / "checkpoints").glob("*.ckpt"))
    if not checkpoints:
        write_result(out_dir, "test_mode", {"error": "no checkpoint from train_32-true to test"})
        raise SystemExit(1)
    test_out = out_dir / "test_output"
    result = run_cli(cli_overrides(out_dir, backend, "mode=test", "dataset/view_sampler=evaluation",
                                   f"checkpointing.load={checkpoints[-1]}", f"test.output_path={test_out}",
                                   f"output_dir={out_dir / 'runs' / 'test'}"), "test_mode", out_dir)
    for name in ("scores_all_avg.json", "benchmark.json", "peak_memory.json"):
        path = test_out / "demo" / name
        result[name] = json.loads(path.read_text()) if path.is_file() else None
    result["backend"] = backend
    return result


def re10k_model(out_dir: Path, backend: str, views: int = 2):
    """The full +experiment=re10k model at 256x256 with random weights (no network: no UniMatch download)."""
    import torch
    from hydra import compose, initialize_config_dir

    from fabric_mvsplat.config import load_config
    from tests.lpips_test_weights import write_lpips_test_weights
    from fabric_mvsplat.build import make_model

    lpips_dir = out_dir / "lpips_random_weights"
    if not (lpips_dir / "vgg.pth").is_file():
        lpips_dir.mkdir(parents=True, exist_ok=True)
        write_lpips_test_weights(lpips_dir, seed=0)
    overrides = ["+experiment=re10k", "model.encoder.unimatch_weights_path=null", f"loss.lpips.weights={lpips_dir}",
                 f"dataset.image_shape=[{IMAGE},{IMAGE}]", f"dataset.view_sampler.num_context_views={views}",
                 f"model.decoder.backend={backend}"]
    with initialize_config_dir(config_dir=str(ROOT / "fabric_mvsplat" / "configs"), version_base=None):
        cfg = load_config(compose("main", overrides=overrides))
    torch.manual_seed(0)
    return cfg, make_model(cfg).cuda()


def phase_inference(out_dir: Path, backend: str) -> dict:
    import torch

    from benchmarks.conftest import PAPER_SECONDS, make_batch

    torch.set_float32_matmul_precision("high")
    _, model = re10k_model(out_dir, backend)
    model.eval()
    result = {"backend": backend, "image": IMAGE, "context_views": 2, "paper_seconds_per_scene": PAPER_SECONDS["scene"]}
    for precision in ("32-true", "bf16-mixed"):
        batch = model.data_shim(make_batch(1, 2, 1, IMAGE, "cuda"))
        encoder_s, render_s = [], []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            for round_index in range(13):  # 3 warm-up rounds, 10 timed
                torch.cuda.synchronize()
                start = time.perf_counter()
                gaussians = model.encode(batch["context"], 0)
                torch.cuda.synchronize()
                middle = time.perf_counter()
                model.render_views(gaussians, batch["target"], (IMAGE, IMAGE))
                torch.cuda.synchronize()
                if round_index >= 3:
                    encoder_s.append(middle - start)
                    render_s.append(time.perf_counter() - middle)
        encoder, render_view = sum(encoder_s) / len(encoder_s), sum(render_s) / len(render_s)
        result[precision] = {"encoder_s": encoder, "render_one_view_s": render_view,
                             "scene_s": encoder + render_view, "scene_vs_paper": (encoder + render_view) / PAPER_SECONDS["scene"]}
    return result


def phase_train_memory(out_dir: Path, backend: str) -> dict:
    import torch

    from benchmarks.conftest import make_batch
    from benchmarks.test_bench_model import make_train_step

    torch.set_float32_matmul_precision("high")
    cfg, model = re10k_model(out_dir, backend)
    model.train()
    peaks = {}
    for batch_size in (1, 2, 4):
        train_step = make_train_step(model, "32-true", "cuda", make_batch(batch_size, 2, 4, IMAGE, "cuda"))
        train_step()  # Adam's state exists from here on, as in every later step
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train_step()
        torch.cuda.synchronize()
        peaks[batch_size] = torch.cuda.max_memory_allocated()
        del train_step
        torch.cuda.empty_cache()
    # Least-squares line through (batch, peak): activations grow linearly with the batch.
    xs, ys = list(peaks), [float(v) for v in peaks.values()]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    predicted = mean_y + slope * (ORIGINAL_BATCH - mean_x)
    return {"backend": backend, "image": IMAGE, "context_views": 2, "target_views": 4, "precision": "32-true",
            "gradient_checkpointing": cfg.model.encoder.gradient_checkpointing,
            "peak_bytes_by_batch": {str(k): v for k, v in peaks.items()}, "bytes_per_scene": slope,
            f"predicted_peak_bytes_batch_{ORIGINAL_BATCH}": predicted,
            "original_bytes_batch_14": ORIGINAL_MEMORY_BYTES, "predicted_vs_original": predicted / ORIGINAL_MEMORY_BYTES}


PHASES: dict[str, Callable[[Path, str], dict]] = {
    "gsplat_build": phase_gsplat_build,
    "cuda_tests": phase_cuda_tests,
    "gsplat_vs_torch": phase_gsplat_vs_torch,
    "synthetic_data": phase_synthetic_data,
    **{f"train_{p}": (lambda out_dir, backend, p=p: phase_train(out_dir, backend, p)) for p in PRECISIONS},
    "test_mode": phase_test_mode,
    "inference": phase_inference,
    "train_memory": phase_train_memory,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results and logs")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="total time for all phases")
    parser.add_argument("--only", nargs="+", choices=list(PHASES), help="run these phases only (e.g. a rerun)")
    parser.add_argument("--reuse-build", action="store_true",
                        help="load gsplat from torch's usual extension cache instead of building it fresh under --out")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)  # one phase, in this process
    parser.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out_dir = args.out.resolve()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build: {torch.version.cuda}). This check needs one CUDA GPU; nothing was run.",
              file=sys.stderr)
        return NO_CUDA_EXIT_CODE
    if args.phase:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        write_result(out_dir, args.phase, PHASES[args.phase](out_dir, args.backend))
        return 0

    phases = default_phases(out_dir)
    if args.only:
        phases = [phase for phase in phases if phase.name in args.only]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if not args.reuse_build:
        env["TORCH_EXTENSIONS_DIR"] = str(out_dir / "torch_extensions")  # a cold build, timed
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))  # gsplat's own default is 10 parallel nvcc jobs
    summary = run_phases(phases, out_dir, args.budget_s, env)
    for name, record in summary["phases"].items():
        print(f"{name:18s} {record['status']:8s} {record.get('wall_s', 0):7.1f} s")
    print(f"results: {out_dir / 'summary.json'} ({summary['elapsed_s']:.0f} s)")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
