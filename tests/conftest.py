"""What the test files share: ../shared, the environment of subprocesses, TensorBoard events, and the
end-to-end runs several tests read (each made once per session: one trained checkpoint, one test-mode run)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # spec, golden tensors and the original's assets, beside the checkout


def shared_path(*parts: str) -> Path:
    """A file or folder under ../shared, or skip the test saying it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (../shared beside the checkout holds it)")
    return path


def load_by_path(relative_path: str, name: str) -> ModuleType:
    """A module of this checkout by its path (benchmarks/ is not installed, so plain `pytest` works too)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env() -> dict[str, str]:
    """One thread per process (the machine is shared) and this checkout first on the import path."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_train(args: list[str], cwd: Path, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m fabric_mvsplat.train ARGS` (under torchrun when nproc > 1)."""
    launcher = [sys.executable, "-m", "fabric_mvsplat.train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "fabric_mvsplat.train"]
    result = subprocess.run([*launcher, *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result


def read_events(log_dir: Path):
    """TensorBoard's own reader over every event file under `log_dir` (scalars and images kept whole)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


# ----------------------------------------------------------------------------------- end-to-end runs
# A very small MVSplat at 32x32 so that each CLI run takes seconds on 2 cores.
TINY_MODEL = [
    "model.encoder.d_feature=32", "model.encoder.num_depth_candidates=8",
    "model.encoder.costvolume_unet_feat_dim=32",
    "model.encoder.gradient_checkpointing=false",
]


def demo_overrides(root: Path, *extra: str) -> list[str]:
    return ["+experiment=demo", f"dataset.roots=[{root}]", "dataset.image_shape=[32,32]", *TINY_MODEL, *extra]


def synthetic_dataset(tmp_path_factory, name: str, **spec) -> Path:
    """A fresh folder `name` with synthetic scenes generated from SyntheticSpec(**spec)."""
    from fabric_mvsplat.data.synthetic import SyntheticSpec, generate_synthetic_dataset

    root = tmp_path_factory.mktemp(name)
    generate_synthetic_dataset(root, SyntheticSpec(**spec), progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory, "synthetic", train_scenes=4, test_scenes=3, frames=24, height=32,
                             width=32, seed=3)


@pytest.fixture(scope="session")
def demo_training(synthetic_root, tmp_path_factory) -> tuple[Path, Path]:
    """The demo trained for 2 steps through the CLI, validating and checkpointing at step 2: (cwd, output_dir)."""
    cwd = tmp_path_factory.mktemp("demo_train")
    run_dir = cwd / "run"
    run_train(demo_overrides(synthetic_root, f"output_dir={run_dir}", "trainer.max_steps=2",
                             "trainer.val_check_interval=2", "checkpointing.every_n_train_steps=2",
                             "train.video_frames=3", "train.print_log_every_n_steps=1"), cwd=cwd)
    return cwd, run_dir


@pytest.fixture(scope="session")
def trained_checkpoint(demo_training) -> Path:
    return demo_training[1] / "checkpoints" / "epoch_0-step_2.ckpt"


@pytest.fixture(scope="session")
def demo_test_run(synthetic_root, trained_checkpoint, tmp_path_factory) -> Path:
    """Test mode on the trained checkpoint through the CLI (one rank), saving everything: the result folder."""
    cwd = tmp_path_factory.mktemp("demo_test")
    out = cwd / "test_out"
    run_train(demo_overrides(synthetic_root, "mode=test", "dataset/view_sampler=evaluation",
                             f"checkpointing.load={trained_checkpoint}", f"test.output_path={out}",
                             "test.save_video=true", "test.save_gaussians=true", f"output_dir={cwd / 'run'}"),
              cwd=cwd)
    return out / "demo"
