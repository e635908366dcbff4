"""Shared benchmark machinery: devices, precisions, warm-up, CUDA sync, peak memory, paper figures.

Every case goes through the `bench` fixture, which warms up, synchronises CUDA around each timed
call, records peak memory and the paper's reference figure into `benchmark.extra_info`, and
returns the last output so a case can check it is real work.

    def test_encoder_forward(bench, device, precision):
        ...
        bench(lambda: encoder(context, 0), device=device, precision=precision,
              items=1, unit="scenes", paper="encoder")

Smoke runs (`--benchmark-disable`, how CI runs the suite) skip cases marked `large` and call
each remaining case once, without warm-up.
"""

import contextlib
import datetime
import os
import platform
import re
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "fabric_mvsplat" / "configs"

# MVSplat's published figures (the paper's): one GPU, 256x256, 2 context views, batch 1.
PAPER_SECONDS = {
    "scene": 0.044,  # encoder + render, per scene
    "encoder": 0.043,  # one encoder call
    "render_view": 0.0015,  # one rendered view
}
PAPER_INFERENCE_MEMORY_BYTES = int(0.86e9)  # MonoSplat's table, inference
PRECISIONS = ("32-true", "bf16-mixed")


# ---- options, markers, result files ---------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fabric_mvsplat benchmarks")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds per case (default: each case's own, 3-5 on CPU)")
    group.addoption("--bench-compile", action="store_true",
                    help="also run the torch.compile cases on CPU (compiling takes minutes there)")
    group.addoption("--save-results", action="store_true",
                    help="write the pytest-benchmark JSON to benchmarks/results/<device>-<date>.json")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Timed runs in one process. pyproject's addopts start pytest-xdist workers (the smoke suite's speed), under
    which pytest-benchmark cannot time and only warns; runs without --benchmark-disable therefore drop the workers
    (called before pytest-xdist's own hook reads -n)."""
    if not config.getoption("benchmark_disable", False) and getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark reads --benchmark-json, so setting it here is enough.
    if config.getoption("--save-results", default=False) and not config.getoption("benchmark_json", None):
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        config.option.benchmark_json = RESULTS_DIR / f"{device_slug()}-{datetime.date.today().isoformat()}.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("benchmark_disable", False):
        return
    skip = pytest.mark.skip(reason="large case: smoke runs (--benchmark-disable) cover the smallest size only")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["fabric_mvsplat"] = environment_info()


def environment_info() -> dict[str, Any]:
    """What a reader needs to compare two result files: device, library versions, threads."""
    info: dict[str, Any] = {
        "device": device_name(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "logical_cpus": os.cpu_count(),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        # Which CPU kernels ran: ATEN_CPU_CAPABILITY=avx2 lowers ATen's, ONEDNN_MAX_CPU_ISA the convolutions'.
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }
    for package in ("gsplat", "lightning_fabric", "numpy"):
        try:
            info[package] = __import__(package).__version__
        except Exception as error:  # gsplat may fail to import without its CUDA extension
            info[package] = f"unavailable ({type(error).__name__})"
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none): on a shared machine, what a
    timing was measured under."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def device_slug() -> str:
    """'cuda-nvidia-h100-80gb-hbm3' or 'cpu-amd-epyc': the file-name part of a results file."""
    name = f"cuda-{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"cpu-{cpu_model()}"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:48].rstrip("-")


# ---- device / precision ---------------------------------------------------------------------
_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=_CUDA)])
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=PRECISIONS)
def precision(request: pytest.FixtureRequest) -> str:
    return request.param


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """`bf16-mixed` = torch.autocast to bfloat16 (what Fabric's precision plugin does); else nothing."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    if precision != "32-true":
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    return contextlib.nullcontext()


@contextlib.contextmanager
def training_matmul_precision(device: str | torch.device) -> Iterator[None]:
    """CUDA cases run with TF32 matmuls, as train.py sets them for training; CPU cases are left alone."""
    if torch.device(device).type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---- memory ---------------------------------------------------------------------------------
def _current_rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * resource.getpagesize()


def _max_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """Peak memory while the block runs.

    CUDA: `torch.cuda.max_memory_allocated` after a reset (tensor memory only, like the original's
    `allocated_bytes.all.peak`). CPU: process RSS sampled every 10 ms from /proc (the process-lifetime
    `getrusage` maximum cannot be reset, so it is kept only as `max_rss_bytes`).
    `delta_bytes` = peak minus what was in use when the block started.
    """

    def __init__(self, device: str | torch.device, interval_s: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_peak"

    @property
    def delta_bytes(self) -> int:
        return max(self.peak_bytes - self.baseline_bytes, 0)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.baseline_bytes = _current_rss_bytes() or _max_rss_bytes()
        self.peak_bytes = self.baseline_bytes
        if _current_rss_bytes() is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _current_rss_bytes() or 0)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        if self._thread is None:
            self.peak_bytes = _max_rss_bytes()
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, _current_rss_bytes() or 0)

    def as_extra_info(self) -> dict[str, Any]:
        info = {"memory_kind": self.kind, "peak_memory_bytes": self.peak_bytes,
                "memory_delta_bytes": self.delta_bytes}
        if self.device.type == "cpu":
            info["max_rss_bytes"] = _max_rss_bytes()
        return info


@pytest.fixture
def peak_memory(benchmark) -> Callable[[str], contextlib.AbstractContextManager[PeakMemory]]:
    """`with peak_memory(device): ...` measures the block and writes it into benchmark.extra_info."""

    @contextlib.contextmanager
    def measure(device: str) -> Iterator[PeakMemory]:
        with PeakMemory(device) as memory:
            yield memory
        benchmark.extra_info.update(memory.as_extra_info())

    return measure


# ---- the timing helper ----------------------------------------------------------------------
@pytest.fixture
def bench(benchmark, request: pytest.FixtureRequest, peak_memory):
    """Time `fn()` with warm-up, CUDA sync and peak memory (TF32 matmuls on CUDA, as training); returns
    fn's last output.

    items/unit: work per call for throughput (e.g. items=3, unit="views" -> views/s).
    paper: a key of PAPER_SECONDS; the reference is paper_count x that figure.
    setup: untimed callable run before every round (e.g. zeroing gradients).
    precision: recorded; fn runs inside `autocast(device, precision)` unless wrap_autocast=False
        (a training step autocasts its forward only: backward under autocast is not recommended).
    """

    def run(fn: Callable[[], Any], *, device: str, precision: str = "32-true", rounds: int = 3,
            warmup: int = 1, items: float | None = None, unit: str | None = None, paper: str | None = None,
            paper_count: float = 1, paper_memory: bool = False, setup: Callable[[], None] | None = None,
            wrap_autocast: bool = True, **info: Any) -> Any:
        rounds = request.config.getoption("--bench-rounds") or rounds
        output: list[Any] = [None]

        def timed() -> None:
            with autocast(device, precision) if wrap_autocast else contextlib.nullcontext():
                output[0] = fn()
            synchronize(device)

        with training_matmul_precision(device):
            if not benchmark.disabled:
                for _ in range(warmup):
                    if setup is not None:
                        setup()
                    timed()
            with peak_memory(device):
                benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)

        extra: dict[str, Any] = {"device": device, "precision": precision, "threads": torch.get_num_threads(),
                                 "load_average": load_average(), **info}
        if items is not None:
            extra.update(items=items, unit=unit or "items")
        if paper is not None:
            extra.update(paper_reference=paper, paper_count=paper_count,
                         paper_seconds=PAPER_SECONDS[paper] * paper_count)
        if paper_memory:
            extra["paper_memory_bytes"] = PAPER_INFERENCE_MEMORY_BYTES
        benchmark.extra_info.update(extra)
        return output[0]

    return run


# ---- model configs and batches --------------------------------------------------------------
# The golden small encoder (../shared/golden/encoder_small) on top of +experiment=re10k.
SMALL_ENCODER = ["model.encoder.d_feature=64", "model.encoder.num_depth_candidates=16",
                 "model.encoder.costvolume_unet_feat_dim=64"]
ENCODER_SIZES = {"small": SMALL_ENCODER, "re10k": []}


@pytest.fixture(scope="session")
def lpips_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random LPIPS-VGG weights in the real files' format: the re10k loss costs the same with them."""
    from tests.lpips_test_weights import write_lpips_test_weights

    path = tmp_path_factory.mktemp("lpips")
    write_lpips_test_weights(path, seed=0)
    return path


@pytest.fixture
def make_cfg(lpips_weights_dir: Path):
    """make_cfg("small"|"re10k", image=64, views=2, extra=[...]) -> RootCfg of +experiment=re10k."""
    from hydra import compose, initialize_config_dir

    from fabric_mvsplat.config import load_config

    def build(encoder: str = "small", image: int = 64, views: int = 2, extra: list[str] = ()):
        overrides = ["+experiment=re10k", "model.encoder.unimatch_weights_path=null",
                     f"loss.lpips.weights={lpips_weights_dir}", f"dataset.image_shape=[{image},{image}]",
                     f"dataset.view_sampler.num_context_views={views}", *ENCODER_SIZES[encoder], *extra]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return load_config(compose("main", overrides=overrides))

    return build


def make_views(batch: int, views: int, image: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Cameras on a short sideways line looking down +z at a random image; near 1, far 100 (re10k)."""
    generator = torch.Generator().manual_seed(seed)
    extrinsics = torch.eye(4).repeat(batch, views, 1, 1)
    extrinsics[..., 0, 3] = torch.linspace(-0.1, 0.1, views)  # camera-to-world, 0.2 baseline
    intrinsics = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]).repeat(batch, views, 1, 1)
    tensors = {
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "image": torch.rand(batch, views, 3, image, image, generator=generator),
        "near": torch.full((batch, views), 1.0),
        "far": torch.full((batch, views), 100.0),
        "index": torch.arange(views).repeat(batch, 1),
    }
    return {key: value.to(device) for key, value in tensors.items()}


def make_batch(batch: int, context_views: int, target_views: int, image: int, device: str) -> dict:
    """A BatchedExample: `context_views` inputs, `target_views` renders supervised against random images."""
    return {"context": make_views(batch, context_views, image, device, seed=0),
            "target": make_views(batch, target_views, image, device, seed=1),
            "scene": [f"bench{i}" for i in range(batch)]}
