"""The one guarded torch.load: every caller (weights, golden files, chunks) names the file and what is wrong, and
a pickled object is refused and never executed unless the caller offers an explicit opt-in."""

import re
from pathlib import Path

import pytest
import torch

from fabric_mvsplat import parity, safe_load
from fabric_mvsplat.data.chunk_io import ChunkReadError, read_chunk
from fabric_mvsplat.metrics.lpips import load_lpips
from fabric_mvsplat.model.encoder.pretrained import load_unimatch_backbone

class Payload:
    """Unpickling this would create the file `marker` (per test: tests may run in parallel workers)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(3)}}, good)
    made = {"good": good, "garbage": tmp_path / "garbage.pth", "truncated": tmp_path / "truncated.pth",
            "pickled": tmp_path / "pickled.pth", "legacy": tmp_path / "legacy.pth"}
    made["garbage"].write_bytes(b"\x00\x01 not torch" * 50)
    made["truncated"].write_bytes(good.read_bytes()[:300])
    made["marker"] = tmp_path / "payload_executed"
    torch.save({"model": {"w": torch.ones(3)}, "note": Payload(made["marker"])}, made["pickled"])
    torch.save({"model": {"w": torch.ones(3)}}, made["legacy"], _use_new_zipfile_serialization=False)
    yield made
    assert not made["marker"].exists(), "a pickled payload was executed"


EXPECTED = {"garbage": "is not a torch.save file", "truncated": "is corrupt or truncated",
            "pickled": "contains pickled Python objects (GLOBAL "}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_every_caller_names_the_file_and_the_problem(files, kind, tmp_path):
    path = files[kind]
    with pytest.raises(safe_load.FileLoadError, match=re.escape(EXPECTED[kind])) as error:
        safe_load.load(path, "weights file")
    assert f"weights file {path}" in str(error.value)

    with pytest.raises(ValueError, match=f"golden file {path}.*{re.escape(EXPECTED[kind])}"):
        parity.load(path)
    with pytest.raises(ValueError, match=rf"UniMatch weights \(model.encoder.unimatch_weights_path\) {path}"):
        load_unimatch_backbone(None, str(path))  # fails on the file, before the encoder is touched
    lpips_dir = tmp_path / f"lpips_{kind}"
    lpips_dir.mkdir()
    (lpips_dir / "vgg16.pth").write_bytes(path.read_bytes())
    (lpips_dir / "vgg.pth").write_bytes(files["good"].read_bytes())
    with pytest.raises(ValueError, match=f"LPIPS weight file {lpips_dir / 'vgg16.pth'}"):
        load_lpips(lpips_dir)
    with pytest.raises(ChunkReadError, match=f"data chunk {path}"):
        read_chunk(path)


def test_pickled_objects_only_with_the_callers_opt_in(files):
    with pytest.raises(safe_load.FileLoadError, match="Re-save it holding only tensors"):
        safe_load.load(files["pickled"], allow_unsafe_load=True)  # no opt-in key: never unpickled
    with pytest.raises(safe_load.FileLoadError, match="rerun with my.opt_in=true"):
        safe_load.load(files["pickled"], opt_in_key="my.opt_in")
    assert not files["marker"].exists()
    with pytest.warns(UserWarning, match="weights_only=False"):
        safe_load.load(files["pickled"], allow_unsafe_load=True, opt_in_key="my.opt_in")
    assert files["marker"].exists()  # the opt-in really unpickles
    files["marker"].unlink()


def test_legacy_files_load_and_missing_or_directory_are_named(files, tmp_path):
    assert torch.equal(safe_load.load(files["legacy"])["model"]["w"], torch.ones(3))
    with pytest.raises(safe_load.FileLoadError, match="nothing.pth does not exist") as error:
        safe_load.load(tmp_path / "nothing.pth")
    assert error.value.reason == "missing"
    with pytest.raises(safe_load.FileLoadError, match=f"{tmp_path} is a directory.*good.pth") as error:
        safe_load.load(tmp_path)
    assert error.value.reason == "directory"
