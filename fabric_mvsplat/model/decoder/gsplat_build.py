"""Getting gsplat's CUDA kernels loaded before the first render.

gsplat 1.5's wheel is pure Python: the first import of `gsplat.cuda._backend` JIT-compiles its CUDA
sources (tens of files; minutes of nvcc) into torch's extension cache, later imports load the built
library. Two things go wrong if the first render simply triggers that:
- without nvcc (or a C++ compiler, or ninja) gsplat prints a warning, leaves `_C = None`, and the
  first render fails with an error about `None`, deep inside a training step;
- under torchrun every local rank compiles at once, and they delete each other's build lock and
  directory;
- a run stopped while compiling (a pre-empted job) leaves torch's lock file, and every later run would wait on
  it forever (build_lock.py clears it).
`prepare_gsplat` runs at start-up: local rank 0 loads (building if needed) while the other local
ranks wait, then they load the built library; missing tools stop every rank with one message.
"""

import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch

from ...errors import UserError
from .build_lock import build_lock
from .rendering import resolve_backend

EXTENSION_NAME = "gsplat_cuda"  # the name gsplat 1.5 builds under
NVCC_DEFAULT_PATHS = (Path("/usr/local/cuda/bin/nvcc"),)  # torch's own fallback when CUDA_HOME is unset


class GsplatUnavailable(UserError, RuntimeError):
    """gsplat's CUDA kernels cannot be built or loaded here; the message says what to install."""


def build_directory() -> Path:
    """Where torch's JIT puts (and gsplat looks for) the built extension."""
    from torch.utils.cpp_extension import _get_build_directory  # the function gsplat itself uses

    return Path(_get_build_directory(EXTENSION_NAME, verbose=False))


def extension_is_built() -> bool:
    """A prebuilt wheel (`gsplat.csrc`) or an earlier JIT build: loading needs no compiler."""
    if importlib.util.find_spec("gsplat") is None:
        return False
    if importlib.util.find_spec("gsplat.csrc") is not None:
        return True
    return (build_directory() / f"{EXTENSION_NAME}.so").exists()


def nvcc_version() -> str | None:
    """`nvcc --version`'s last line, from CUDA_HOME/bin or PATH; None when nvcc is missing or broken."""
    candidates = [Path(os.environ[key], "bin", "nvcc") for key in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(key)]
    candidates += [Path(found)] if (found := shutil.which("nvcc")) else []
    candidates += list(NVCC_DEFAULT_PATHS)
    for nvcc in candidates:
        if nvcc.is_file():
            try:
                result = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if result.returncode == 0:
                return result.stdout.strip().splitlines()[-1]
    return None


def missing_build_tools() -> list[str]:
    """What a JIT build of gsplat needs and this machine lacks, each with how to get it."""
    missing = []
    if torch.version.cuda is None:
        missing.append(f"a CUDA build of PyTorch (this torch {torch.__version__} has no CUDA)")
    if nvcc_version() is None:
        wanted = f" {torch.version.cuda}" if torch.version.cuda else ""
        missing.append(f"the CUDA toolkit{wanted} with nvcc (matching torch's CUDA; set CUDA_HOME if it is "
                       "not on PATH)")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        missing.append(f"a C++ compiler ('{compiler}' not found; e.g. apt install g++)")
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        missing.append("ninja (pip install ninja)")
    return missing


def unavailable_message(reason: str) -> str:
    return (f"model.decoder.backend resolves to gsplat (CUDA device), but gsplat's CUDA kernels cannot be "
            f"loaded: {reason}. gsplat 1.5 compiles them once on first use (several minutes) into "
            f"{build_directory() if importlib.util.find_spec('gsplat') else 'torch extensions cache'}. "
            "Meanwhile model.decoder.backend=torch renders on the GPU with the pure-PyTorch rasterizer (slower).")


def load_gsplat_kernels(build: bool = True) -> float:
    """Import gsplat's compiled kernels, compiling them first if needed and `build` is set.
    -> seconds it took. Raises GsplatUnavailable (before any compiling) with what to install."""
    if importlib.util.find_spec("gsplat") is None:
        raise GsplatUnavailable(unavailable_message("gsplat is not installed (pip install 'gsplat>=1.5,<1.6')"))
    if not extension_is_built():
        if not build:
            raise GsplatUnavailable(unavailable_message(
                f"local rank 0 did not leave a built extension in {build_directory()} (see its error)"))
        missing = missing_build_tools()
        if missing:
            raise GsplatUnavailable(unavailable_message("this machine lacks " + "; ".join(missing)))
    start = time.perf_counter()
    with build_lock(build_directory(), "gsplat's CUDA kernels"):  # a build stopped midway would hang this import
        from gsplat.cuda._backend import _C

    if _C is None:
        raise GsplatUnavailable(unavailable_message("gsplat's build did not produce a loadable extension "
                                                    "(run with VERBOSE=1 to see the compiler output)"))
    return time.perf_counter() - start


def prepare_gsplat(fabric, backend: str) -> None:
    """Start-up step of train.py: load gsplat's kernels when the decoder will use gsplat.

    Local rank 0 goes first and builds if needed; the other local ranks wait (Fabric's barrier has no
    timeout), then only load. A missing tool raises the same GsplatUnavailable on every rank (exit code 2)."""
    if resolve_backend(backend, fabric.device) != "gsplat":
        return
    error = None
    with fabric.rank_zero_first(local=True):
        try:
            seconds = load_gsplat_kernels(build=fabric.local_rank == 0)
        except GsplatUnavailable as caught:  # caught so that rank 0 still releases the waiting ranks
            error = caught
        except Exception as caught:  # a failed compile: same, with the compiler's error
            error = GsplatUnavailable(unavailable_message(f"building failed ({type(caught).__name__}: {caught})"))
    if error is not None:
        raise error
    fabric.print(f"gsplat CUDA kernels loaded in {seconds:.1f} s")
