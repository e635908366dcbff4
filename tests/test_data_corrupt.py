"""Corrupt data is skipped, warned about (file and scene named) and counted; pickles are never executed."""

import json
import os
import warnings
from itertools import islice
from pathlib import Path

import pytest
import torch

from fabric_mvsplat.errors import UnusableDataError
from fabric_mvsplat.data import StepTracker, TrainStream, read_chunk
from fabric_mvsplat.data.chunk_io import ChunkReadError
from fabric_mvsplat.data.config import DataLoaderStageCfg
from data_fixtures import dataset_cfg, make_scene, make_split

class Payload:
    """Unpickling this would create the file `marker`: weights_only must refuse it (a marker per test: tests may
    run in parallel workers)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def add_chunk(stage_dir: Path, name: str, keys: list[str], write) -> None:
    write(stage_dir / name)
    index = json.loads((stage_dir / "index.json").read_text())
    index.update({key: name for key in keys})
    (stage_dir / "index.json").write_text(json.dumps(index))


def test_pickle_payload_is_refused_not_executed(tmp_path):
    marker = tmp_path / "payload_executed"
    scene = make_scene("evil", 4, 8, 8, seed=0)
    torch.save([{**scene, "url": Payload(marker)}], tmp_path / "000000.torch")
    with pytest.raises(ChunkReadError, match="000000.torch"):
        read_chunk(tmp_path / "000000.torch")
    assert not marker.exists()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_chunks_and_scenes_are_skipped_and_counted(tmp_path, num_workers):
    marker = tmp_path / "payload_executed"
    stage = tmp_path / "train"
    good = make_split(stage, 4, scenes_per_chunk=2)
    good_bytes = (stage / "000000.torch").read_bytes()
    add_chunk(stage, "000010.torch", ["trunc_a", "trunc_b"],
              lambda path: path.write_bytes(good_bytes[: len(good_bytes) // 2]))
    add_chunk(stage, "000011.torch", ["garbage"], lambda path: path.write_bytes(os.urandom(3000)))
    evil = make_scene("evil", 12, 18, 32, seed=1)
    add_chunk(stage, "000012.torch", ["evil"], lambda path: torch.save([{**evil, "url": Payload(marker)}], path))
    broken_image = make_scene("broken_image", 12, 18, 32, seed=2)
    broken_image["images"] = [torch.tensor([1, 2, 3], dtype=torch.uint8)] * 12
    bad_cameras = {**make_scene("bad_cameras", 12, 18, 32, seed=3), "cameras": torch.zeros(12, 17)}
    add_chunk(stage, "000013.torch", ["broken_image", "bad_cameras", "not_in_chunk"],
              lambda path: torch.save([broken_image, bad_cameras], path))

    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=num_workers), StepTracker(),
                               0, 1, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scenes = [batch["scene"][0] for batch in islice(stream, 8)]  # two passes over the 4 good scenes
    assert sorted(scenes) == sorted(good * 2)
    counts = stream.skip_counts
    assert set(counts) == {"corrupt_chunk", "undecodable_image", "corrupt_scene", "missing_from_chunk"}
    # every scene read and not yielded was counted: cursors (scenes read per worker) = yielded + skipped
    assert sum(stream.state_dict()["cursors"]) == 8 + sum(counts.values())
    assert stream.skipped_scenes == sum(counts.values()) >= 7  # at least the 7 broken scenes of one pass
    assert not marker.exists()
    if num_workers == 0:  # worker processes print their warnings to stderr instead
        messages = "\n".join(str(w.message) for w in caught)
        for expected in ("000010.torch", "000011.torch", "000012.torch", "'broken_image' frame",
                         "'bad_cameras'", "'not_in_chunk'"):
            assert expected in messages
    restored = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=num_workers),
                                 StepTracker(), 0, 1, seed=0)
    restored.load_state_dict(stream.state_dict())
    assert restored.skipped_scenes == stream.skipped_scenes  # the count survives a resume


def test_pass_without_usable_scene_names_the_filter(tmp_path):
    make_split(tmp_path / "train", 3, num_frames=3)  # too short for the sampler's context gap of 3
    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=0), StepTracker(), 0, 1, 0)
    with pytest.raises(UnusableDataError, match="none of the 3 scenes.*view_sampler.*3 frames"):
        next(iter(stream))
    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(num_workers=2), StepTracker(), 0, 1, 0)
    with pytest.raises(UnusableDataError, match="view_sampler"):
        next(iter(stream))


def jpeg_declaring(width: int, height: int) -> torch.Tensor:
    """A small real JPEG whose frame header (SOF0) declares width x height: what a decompression bomb looks like to
    a reader that trusts the header (a few kB that decode to width x height x 3 bytes)."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return torch.frombuffer(data, dtype=torch.uint8)


def test_an_image_above_the_pixel_budget_is_skipped_and_counted_without_decoding(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    bomb = jpeg_declaring(13000, 13000)
    with Image.open(__import__("io").BytesIO(bomb.numpy().tobytes())) as image:
        assert image.size == (13000, 13000)  # Pillow reads the declared size from the header
    stage = tmp_path / "train"
    good = make_split(stage, 3, scenes_per_chunk=3)
    scene = make_scene("bomb", 12, 18, 32, seed=4)
    scene["images"] = [bomb] * 12
    add_chunk(stage, "000020.torch", ["bomb"], lambda path: torch.save([scene], path))
    decoded_sizes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded_sizes.append(self.size) or real_load(self))

    stream = TrainStream(dataset_cfg(tmp_path), DataLoaderStageCfg(), StepTracker(), 0, 1, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scenes = [batch["scene"][0] for batch in islice(stream, 6)]  # two passes over the 3 good scenes
    assert sorted(scenes) == sorted(good * 2)
    counts = stream.skip_counts
    assert set(counts) == {"image_too_large"} and stream.skipped_scenes == counts["image_too_large"] >= 1  # corrupt
    assert (13000, 13000) not in decoded_sizes and decoded_sizes  # the others were decoded, the bomb never
    messages = "\n".join(str(w.message) for w in caught)
    assert "'bomb' frame" in messages and "13000x13000 = 169,000,000 pixels > dataset.max_image_pixels=40,000,000" \
        in messages
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_the_pixel_budget_is_a_config_key(tmp_path):
    """A frame of exactly the budget loads; one pixel fewer in the budget refuses it."""
    from fabric_mvsplat.data.chunks import ExampleBuilder
    from fabric_mvsplat.data.view_sampler import SceneRejected

    scene = make_scene("small", 12, 18, 32, seed=5)
    generator = torch.Generator().manual_seed(0)
    ExampleBuilder(dataset_cfg(tmp_path, max_image_pixels=18 * 32), "train").build(scene, "chunk", generator, 0)
    with pytest.raises(SceneRejected) as rejected:
        ExampleBuilder(dataset_cfg(tmp_path, max_image_pixels=18 * 32 - 1), "train").build(scene, "chunk", generator, 0)
    assert rejected.value.reason == "image_too_large"
