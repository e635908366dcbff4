"""The CPU backend's compiled compositing: csrc/rasterize_cpu.cpp, built on first use.

Binning is rasterize_torch's (`bin_to_tiles`, torch ops, no gradient); the per-pixel compositing and
its backward run as C++ over tiles, split over torch's intra-op threads. The C++ evaluates each
(pixel, Gaussian) pair once where the torch rasterizer evaluates a whole depth block of every active
tile, and only the tile's pixels inside the box of the Gaussian's alpha >= 1/255 ellipse (a quarter of the
tile on the demo's trained Gaussians); it keeps nothing per pair for backward (it recomputes alpha front to
back), and has no autograd graph of dozens of tensor ops per block. Results agree with rasterize_torch and the
dense reference to rounding (tests/test_rasterizer_cpu.py).

The extension is compiled by torch.utils.cpp_extension (a C++ compiler and ninja; about a minute once)
into torch's extension cache (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions), as gsplat builds its
CUDA code; later processes load the built library. Without a compiler, or if the build fails, one line says
why and rendering continues with the pure-PyTorch rasterizer (same images, slower). A process killed while it
builds leaves torch's lock file behind, and torch would wait for it forever: builders take an OS lock first, which
dies with its holder, and clear a lock file they find under it (build_lock.py).
"""

import hashlib
import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .build_lock import build_lock
from .projection import ProjectedGaussians
from .rasterize_torch import bin_to_tiles, rasterize_torch

SOURCE = Path(__file__).with_name("csrc") / "rasterize_cpu.cpp"
# Named after the source's content: checkouts of the same code share one build, and different versions (several
# checkouts or environments on one machine) each keep their own instead of rebuilding over each other.
EXTENSION_NAME = "fabric_mvsplat_rasterize_cpu_" + hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
TILE_SIZE = 8  # per-pixel loops skip a missed pair cheaply, so larger tiles (fewer intersections) pay here

_lock = threading.Lock()
_state: dict = {}  # "module": the loaded extension or None once tried; "reason": why not


def build_directory() -> Path:
    """Where torch's JIT builds (and later finds) the extension."""
    from torch.utils.cpp_extension import _get_build_directory  # the function load() itself uses

    return Path(_get_build_directory(EXTENSION_NAME, verbose=False))


def staged_source() -> Path:
    """The source copied into the build directory: ninja rebuilds when a source's path changes, so every checkout
    compiles the same path (the build directory is per content, so the copy never changes once written)."""
    staged = build_directory() / SOURCE.name
    if not staged.exists() or staged.read_bytes() != SOURCE.read_bytes():
        staged.parent.mkdir(parents=True, exist_ok=True)
        temporary = staged.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(SOURCE.read_bytes())
        os.replace(temporary, staged)  # atomic: a concurrent build never reads half a file
    return staged


def is_built() -> bool:
    return (build_directory() / f"{EXTENSION_NAME}.so").exists()


def missing_build_tools() -> str | None:
    """Why a build cannot even start here, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ('{compiler}' not found; install g++ or set CXX)"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def load_cpu_kernels(verbose: bool = False):
    """The compiled extension (built on first call), or None after printing one line that says why not.
    Tried once per process; FABRIC_MVSPLAT_CPU_KERNELS=0 turns it off."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module, reason = None, None
        if os.environ.get("FABRIC_MVSPLAT_CPU_KERNELS", "1") == "0":
            reason = "FABRIC_MVSPLAT_CPU_KERNELS=0"
        elif not is_built():  # a built library loads without a compiler (torch rebuilds only if the source changed)
            reason = missing_build_tools()
        if reason is None:
            try:
                from torch.utils.cpp_extension import load

                start = time.perf_counter()
                # warnings: e.g. compiler ABI notes; the outcome is reported in one line
                with build_lock(build_directory(), "the CPU rasterizer"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    module = load(name=EXTENSION_NAME, sources=[str(staged_source())],
                                  extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=verbose)
                seconds = time.perf_counter() - start
                if seconds > 5:
                    print(f"fabric_mvsplat: compiled the CPU rasterizer in {seconds:.0f} s into {build_directory()} "
                          "(reused by later runs)", file=sys.stderr)
            except Exception as error:  # a failed build must never stop training: the torch path renders the same
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                reason = f"building it failed ({type(error).__name__}: {first_line})"
        if module is None and reason != "FABRIC_MVSPLAT_CPU_KERNELS=0":
            print(f"fabric_mvsplat: compiled CPU rasterizer unavailable: {reason}; rendering with the PyTorch "
                  "rasterizer (same images, slower)", file=sys.stderr)
        _state.update(module=module, reason=reason)
        return module


class CompositeTiles(torch.autograd.Function):
    """packed [R, 6 + D] rows (u, v, conic a, b, c, opacity, features) + tile bins
    -> composited features [I, H, W, D] (no background) and final transmittance [I, H, W]."""

    @staticmethod
    def forward(ctx, packed: Tensor, kernels, bins, images: int, image_shape: tuple[int, int], tile_size: int):
        ids = bins.gaussian.contiguous()
        starts, counts = bins.starts.contiguous(), bins.counts.contiguous()
        features, transmittance, last = kernels.composite_forward(
            packed, ids, starts, counts, images, image_shape[0], image_shape[1], tile_size, bins.tiles_x, bins.tiles_y)
        ctx.save_for_backward(packed, ids, starts, counts, features, transmittance, last)
        ctx.kernels, ctx.grid = kernels, (image_shape[0], image_shape[1], tile_size, bins.tiles_x, bins.tiles_y)
        ctx.mark_non_differentiable(last)
        return features, transmittance, last

    @staticmethod
    def backward(ctx, grad_features: Tensor, grad_transmittance: Tensor, _grad_last):
        packed, ids, starts, counts, features, transmittance, last = ctx.saved_tensors
        if grad_features is None:
            grad_features = torch.zeros_like(features)
        if grad_transmittance is None:
            grad_transmittance = torch.zeros_like(transmittance)
        per_intersection = ctx.kernels.composite_backward(packed, ids, starts, counts, features, transmittance, last,
                                                          grad_features, grad_transmittance, *ctx.grid)
        grad_packed = torch.zeros_like(packed).index_add_(0, ids, per_intersection)
        return grad_packed, None, None, None, None, None


def rasterize_cpu(projected: ProjectedGaussians, opacities: Tensor, features: Tensor, image_shape: tuple[int, int],
                  background: Tensor, *, tile_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as `rasterize_torch` (which it falls back to when the extension is unavailable):
    [I, N, ...] projected Gaussians -> features [I, H, W, D] with the background blended in, alpha [I, H, W].
    tile_size: TILE_SIZE when None (read at call time, so a test can set it for every render)."""
    tile_size = TILE_SIZE if tile_size is None else tile_size
    kernels = load_cpu_kernels()
    if kernels is None or projected.means2d.device.type != "cpu":
        return rasterize_torch(projected, opacities, features, image_shape, background)
    means2d, conics, depths = projected.means2d, projected.conics, projected.depths
    visible, cov2d_diag = projected.visible, projected.cov2d_diag
    num_images, _, channels = features.shape
    bins = bin_to_tiles(means2d.detach(), cov2d_diag.detach(), opacities.detach(), depths.detach(), visible,
                        image_shape, tile_size)
    packed = torch.cat([means2d, conics, opacities[..., None], features], dim=-1).flatten(0, 1).contiguous()
    accumulated, transmittance, _ = CompositeTiles.apply(packed, kernels, bins, num_images, image_shape, tile_size)
    background = background.to(features.dtype).expand(num_images, channels)
    image = accumulated + transmittance[..., None] * background[:, None, None]
    return image, 1 - transmittance
