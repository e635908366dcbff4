"""Start-up loading of gsplat's CUDA kernels: what happens when the build tools are missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning_fabric import Fabric

from fabric_mvsplat.errors import UserError
from fabric_mvsplat.model.decoder import gsplat_build
from fabric_mvsplat.model.decoder.gsplat_build import GsplatUnavailable, load_gsplat_kernels, prepare_gsplat


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """No nvcc, no C++ compiler on PATH, an empty torch extensions cache, gsplat's backend not imported."""
    pytest.importorskip("gsplat")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    for key in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CXX", "no-such-c++")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.setattr(gsplat_build, "NVCC_DEFAULT_PATHS", ())
    monkeypatch.delitem(sys.modules, "gsplat.cuda._backend", raising=False)
    return empty_bin


def test_nvcc_is_found_and_run_from_path(bare_machine):
    assert gsplat_build.nvcc_version() is None
    nvcc = bare_machine / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 1\n")  # present but broken: as good as missing
    nvcc.chmod(0o755)
    assert gsplat_build.nvcc_version() is None
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    assert gsplat_build.nvcc_version() == "Cuda compilation tools, release 12.4, V12.4.131"


def test_missing_tools_stop_before_any_build_with_one_clear_message(bare_machine):
    with pytest.raises(GsplatUnavailable) as error:
        load_gsplat_kernels()
    message = str(error.value)
    assert "nvcc" in message and "C++ compiler" in message and "model.decoder.backend=torch" in message
    assert "gsplat.cuda._backend" not in sys.modules  # gsplat's JIT build was never started


def test_waiting_ranks_never_build(bare_machine):
    with pytest.raises(GsplatUnavailable, match="local rank 0 did not leave a built extension"):
        load_gsplat_kernels(build=False)
    assert "gsplat.cuda._backend" not in sys.modules


def test_prepare_gsplat_stops_with_a_user_error(bare_machine, monkeypatch):
    """A UserError: train.main prints its one line and exits with code 2 (test_user_errors checks that path)."""
    monkeypatch.setattr(gsplat_build, "resolve_backend", lambda backend, device: "gsplat")  # as on a GPU
    fabric = Fabric(accelerator="cpu", devices=1)
    with pytest.raises(UserError, match="model.decoder.backend=torch"):
        prepare_gsplat(fabric, "auto")


def test_prepare_gsplat_does_nothing_for_the_torch_backend(bare_machine):
    prepare_gsplat(Fabric(accelerator="cpu", devices=1), "auto")  # auto on CPU -> torch
    prepare_gsplat(Fabric(accelerator="cpu", devices=1), "torch")
    assert "gsplat.cuda._backend" not in sys.modules


def test_under_torchrun_rank_zero_builds_first_and_a_failure_stops_every_rank(bare_machine, tmp_path):
    tests = Path(__file__).resolve().parent
    results = tmp_path / "results"
    results.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(bare_machine)]),  # no nvcc, no c++ (the fixture's empty bin)
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                str(tests / "gsplat_build_ranks.py"), str(results)],
                               capture_output=True, text=True, env=env, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0 and not list(results.glob("*.unexpected")), output[-3000:]
    ranks = [json.loads((results / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["build"] and not ranks[1]["build"]  # only local rank 0 may compile
    assert ranks[1]["start"] >= ranks[0]["end"]  # the others wait until it is done
    assert output.count("model.decoder.backend=torch") >= 2, output[-3000:]  # each rank says why it stops
    assert "nvcc" in output and "did not leave a built extension" in output


def test_a_stale_torch_lock_is_cleared_before_gsplat_loads(bare_machine, monkeypatch, capsys):
    """A run pre-empted while gsplat compiled leaves torch's lock file in gsplat's build directory; torch would wait
    on it forever at the next start-up. It is gone before gsplat's backend is imported, and the console says so."""
    import types

    directory = gsplat_build.build_directory()  # made by torch's helper
    stale = directory / "lock"
    stale.touch()
    seen_at_import = []

    class Backend(types.ModuleType):  # stands in for gsplat's backend: records whether the lock was still there
        @property
        def _C(self):
            seen_at_import.append(stale.exists())
            return object()

    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", Backend("gsplat.cuda._backend"))
    monkeypatch.setattr(gsplat_build, "extension_is_built", lambda: True)
    load_gsplat_kernels()
    assert seen_at_import == [False] and not stale.exists()
    assert f"removed {stale}, left by a build that was stopped" in capsys.readouterr().err
