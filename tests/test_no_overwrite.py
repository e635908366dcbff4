"""Nothing overwritten, nothing impersonated: the synthetic generator and the demo's synthetic_if_missing
never replace or stand in for a user's data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fabric_mvsplat.data.chunk_io import write_chunks
from fabric_mvsplat.data.synthetic import SyntheticSpec, ensure_synthetic_dataset, main

TINY = dict(train_scenes=1, test_scenes=1, frames=6, height=16, width=16)
TINY_ARGS = ["--train-scenes", "1", "--test-scenes", "1", "--frames", "6", "--height", "16", "--width", "16"]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def converted_test_stage(root: Path) -> None:
    """What `convert colmap --out ROOT/test` leaves: one chunk and its index."""
    scene = {"url": "mine", "timestamps": torch.arange(2), "cameras": torch.zeros(2, 18),
             "images": [torch.tensor([1, 2, 3], dtype=torch.uint8)] * 2, "key": "my_scene"}
    write_chunks([scene], root / "test")


@pytest.mark.parametrize("existing", ["chunk", "index_only", "evaluation_index"])
def test_generator_cli_refuses_a_dataset_folder(existing, tmp_path, capsys):
    root = tmp_path / "mine"
    if existing == "chunk":
        converted_test_stage(root)
    elif existing == "index_only":
        (root / "train").mkdir(parents=True)
        (root / "train" / "index.json").write_text("{}")
    else:
        root.mkdir()
        (root / "evaluation_index.json").write_text("{}")
    before = all_files(root)
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(root), *TINY_ARGS])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--overwrite" in message and str(root) in message
    assert all_files(root) == before  # nothing touched


def test_generator_overwrite_replaces_only_when_asked(tmp_path):
    root = tmp_path / "mine"
    converted_test_stage(root)
    (root / "notes.txt").write_text("keep me")
    main(["--out", str(root), *TINY_ARGS, "--overwrite"])
    files = all_files(root)
    assert files["notes.txt"] == b"keep me"
    assert b"my_scene" not in files["test/index.json"]
    assert {"train/000000.torch", "test/000000.torch", "evaluation_index.json"} <= set(files)


def test_ensure_fills_only_an_absent_or_empty_folder(tmp_path, capsys):
    absent = tmp_path / "absent"
    assert ensure_synthetic_dataset(absent, SyntheticSpec(seed=1, **TINY), progress=False) is True
    assert "absent: generating the synthetic demo dataset" in capsys.readouterr().err

    empty = tmp_path / "empty"
    (empty / "test").mkdir(parents=True)  # empty folders hold no data
    assert ensure_synthetic_dataset(empty, SyntheticSpec(seed=1, **TINY), progress=False) is True
    assert "empty: generating" in capsys.readouterr().err

    images_only = tmp_path / "mistyped"
    (images_only / "images").mkdir(parents=True)
    (images_only / "images" / "0001.jpg").write_bytes(b"jpeg")
    with pytest.raises(FileExistsError, match="holds files but no chunks"):
        ensure_synthetic_dataset(images_only, SyntheticSpec(seed=1, **TINY), progress=False)
    assert all_files(images_only) == {"images/0001.jpg": b"jpeg"}
    assert not (tmp_path / "mistyped.partial").exists()

    converted = tmp_path / "converted"
    converted_test_stage(converted)
    before = all_files(converted)
    assert ensure_synthetic_dataset(converted, SyntheticSpec(seed=1, **TINY), progress=False) is False  # chunks: used as they are
    assert all_files(converted) == before


def start_demo(cwd: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "unused.ckpt").touch()  # never read: the data check stops the run first
    return subprocess.Popen([sys.executable, "-m", "fabric_mvsplat.train", "+experiment=demo", "mode=test",
                             f"checkpointing.load={cwd / 'unused.ckpt'}", f"output_dir={cwd / 'out'}", *overrides],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_demo(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def test_demo_never_fills_a_mistyped_root(tmp_path):
    """The demo names datasets/synthetic; `dataset.roots=[datasets/mien]` must fail, not generate 72 scenes.
    The demo's own root, holding someone's files but no chunks, is refused too. (Both runs at once.)"""
    mistyped, occupied = tmp_path / "mistyped", tmp_path / "occupied"
    (occupied / "datasets" / "synthetic").mkdir(parents=True)
    (occupied / "datasets" / "synthetic" / "frame1.png").write_bytes(b"png")
    runs = [start_demo(mistyped, "dataset.roots=[datasets/mien]"), start_demo(occupied)]
    (returncode, stderr), (occupied_returncode, occupied_stderr) = (finish_demo(run) for run in runs)

    assert returncode == 2, stderr[-2000:]
    assert "datasets/mien" in stderr and "Traceback" not in stderr
    assert "python -m fabric_mvsplat.data.synthetic" not in stderr  # no command that would overwrite
    assert not (mistyped / "datasets").exists()

    assert occupied_returncode == 2 and "holds files but no chunks" in occupied_stderr, occupied_stderr[-2000:]
    assert sorted(p.name for p in (occupied / "datasets" / "synthetic").iterdir()) == ["frame1.png"]
