"""Evaluation indices for any converted dataset, in the original's format, read by test mode's sampler."""

import json
from pathlib import Path

import pytest
import torch

from fabric_mvsplat.data.chunk_io import write_chunks
from fabric_mvsplat.data.config import ViewSamplerEvaluationCfg
from fabric_mvsplat.data.make_index import main
from fabric_mvsplat.data.view_sampler import get_view_sampler

ORIGINAL_INDEX = Path(__file__).resolve().parents[1] / ".." / "shared" / "assets" / "evaluation_index_re10k.json"
FRAMES = {"long": 40, "short": 12, "too_short": 10}


def scene(key: str, frames: int) -> dict:
    return {"url": "", "timestamps": torch.arange(frames), "cameras": torch.zeros(frames, 18),
            "images": [torch.tensor([0], dtype=torch.uint8)] * frames, "key": key}


@pytest.fixture
def root(tmp_path) -> Path:
    write_chunks([scene(k, n) for k, n in FRAMES.items()], tmp_path / "mine" / "test", target_bytes=1)  # 3 chunks
    return tmp_path / "mine"


def run(root: Path, out: Path, *extra: str) -> dict:
    main(["--root", str(root), "--stage", "test", "--context-gap", "10", "--targets", "3", "--out", str(out), *extra])
    return json.loads(out.read_text())


def test_index_entries(root, tmp_path):
    index = run(root, tmp_path / "a.json", "--seed", "0")
    assert list(index) == list(FRAMES) and index["too_short"] is None  # 10 frames cannot hold contexts 10 apart
    for key in ("long", "short"):
        (left, right), targets = index[key]["context"], index[key]["target"]
        assert right - left == 10 and 0 <= left and right < FRAMES[key]
        assert len(set(targets)) == 3 and targets == sorted(targets) and all(left < t < right for t in targets)
    assert run(root, tmp_path / "b.json", "--seed", "0") == index  # seeded
    assert run(root, tmp_path / "c.json", "--seed", "1") != index

    # Test mode's evaluation sampler reads it and returns exactly these frames.
    sampler = get_view_sampler(ViewSamplerEvaluationCfg(index_path=str(tmp_path / "a.json")), "test", False, False)
    context, target = sampler.sample("long", FRAMES["long"], torch.Generator(), 0)
    assert context.tolist() == index["long"]["context"] and target.tolist() == index["long"]["target"]


def test_same_structure_as_the_original_index(root, tmp_path):
    if not ORIGINAL_INDEX.is_file():
        pytest.skip(f"{ORIGINAL_INDEX} is absent (../shared holds the original's evaluation indices)")
    original = json.loads(ORIGINAL_INDEX.read_text())
    ours = run(root, tmp_path / "a.json")

    def shape(entry):
        return None if entry is None else {k: (len(v), sorted({type(i).__name__ for i in v})) for k, v in entry.items()}

    assert {json.dumps(shape(e), sort_keys=True) for e in ours.values()} == \
        {json.dumps(shape(e), sort_keys=True) for e in original.values()}
    assert all(isinstance(k, str) for k in ours)


def test_refusals(root, tmp_path, capsys):
    out = tmp_path / "index.json"
    out.write_text("{}")
    for args, message in ((["--out", str(out)], "exists"),
                          (["--out", str(tmp_path / "x.json"), "--targets", "10"], "--targets 10"),
                          (["--out", str(tmp_path / "x.json"), "--stage", "train"], "train/index.json")):
        with pytest.raises(SystemExit) as stop:
            main(["--root", str(root), "--context-gap", "10", *args])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert out.read_text() == "{}" and not (tmp_path / "x.json").exists()
    assert run(root, out, "--overwrite")["long"] is not None
