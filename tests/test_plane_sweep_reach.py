"""How far the plane sweep can see (debug/parallax.py), checked against a pinhole camera moved sideways: a point at
z-depth z moves by fx * t / z pixels when the camera moves t along its x axis, and a fronto-parallel plane's image
shifts by that many pixels as a whole."""

import json
import math

import pytest
import torch
from conftest import demo_overrides
from loop_fixtures import compose_cfg

from fabric_mvsplat.debug.parallax import colour_sweep_depth, shift_between_depths, sweep_reach
from fabric_mvsplat.model.encoder.cost_volume import disparity_candidates

SIZE = 32
FX = 1.0  # normalised focal length: fx = 32 pixels at 32 x 32


def sideways_pair(translation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras looking down +z (OpenCV), the second `translation` further along x: intrinsics [1, 2, 3, 3]
    (normalised), camera-to-world extrinsics [1, 2, 4, 4]."""
    intrinsics = torch.tensor([[FX, 0, 0.5], [0, FX, 0.5], [0, 0, 1]]).repeat(1, 2, 1, 1)
    extrinsics = torch.eye(4).repeat(1, 2, 1, 1)
    extrinsics[0, 1, 0, 3] = translation
    return intrinsics, extrinsics


def test_the_shift_between_two_depths_is_the_pinhole_cameras_parallax():
    intrinsics, extrinsics = sideways_pair(0.3)
    first = torch.full((1, 2, SIZE, SIZE), 2.0)
    second = torch.full((1, 2, SIZE, SIZE), 5.0)
    shift = shift_between_depths(intrinsics, extrinsics, first, second)
    assert shift.shape == (2, SIZE, SIZE)
    expected = FX * SIZE * 0.3 * (1 / 2.0 - 1 / 5.0)  # 2.88 pixels, at every pixel of either view
    torch.testing.assert_close(shift, torch.full_like(shift, expected), rtol=1e-4, atol=1e-4)
    # 16 x 16 depth maps of the same images: half the pixels, half the shift
    half = shift_between_depths(intrinsics, extrinsics, first[..., ::2, ::2], second[..., ::2, ::2])
    torch.testing.assert_close(half, torch.full_like(half, expected / 2), rtol=1e-4, atol=1e-4)


def textured_plane(shift: int, generator: torch.Generator) -> torch.Tensor:
    """[1, 2, 3, SIZE, SIZE]: a random texture and the same texture `shift` pixels to the left, what the second
    camera of `sideways_pair` sees of a fronto-parallel plane that moves by `shift` pixels."""
    texture = torch.rand(3, SIZE, SIZE + shift, generator=generator)
    return torch.stack([texture[..., :SIZE], texture[..., shift:shift + SIZE]])[None]


@pytest.mark.parametrize("candidate", [12, 30])
def test_a_colour_plane_sweep_finds_a_textured_planes_depth(candidate):
    near, far, count = torch.ones(1, 2), torch.full((1, 2), 20.0), 48
    disparity = float(disparity_candidates(near, far, count, torch.float32)[0, candidate])
    shift = 4
    translation = shift / (FX * SIZE * disparity)  # the plane at candidate `candidate`'s depth moves 4 pixels
    intrinsics, extrinsics = sideways_pair(translation)
    images = textured_plane(shift, torch.Generator().manual_seed(candidate))
    depth, seen = colour_sweep_depth(images, intrinsics, extrinsics, near, far, count)
    # the first view's pixels the second sees (a point moves `shift` pixels left: the first `shift` columns leave
    # the picture), away from the 3 x 3 windows' border
    interior = (slice(1, -1), slice(shift + 1, SIZE - 1))
    assert seen[0][interior].all()
    torch.testing.assert_close(depth[0][interior], torch.full_like(depth[0][interior], 1 / disparity))
    # the same images with the cameras' offset on the other side: no depth explains them
    intrinsics, extrinsics = sideways_pair(-translation)
    wrong, _ = colour_sweep_depth(images, intrinsics, extrinsics, near, far, count)
    assert ((wrong[0][interior] - 1 / disparity).abs() < 1e-3).float().mean() < 0.2


def test_sweep_reach_in_feature_pixels_and_the_colour_sweeps_score():
    near, far, count = torch.ones(1, 2), torch.full((1, 2), 20.0), 48
    disparity = float(disparity_candidates(near, far, count, torch.float32)[0, 20])
    shift = 4
    intrinsics, extrinsics = sideways_pair(shift / (FX * SIZE * disparity))
    images = textured_plane(shift, torch.Generator().manual_seed(0))
    depth = torch.full((1, 2, SIZE, SIZE), 1 / disparity)
    depth[0, 0, 0, 0] = 0  # unknown: left out of the band and the scores
    context = {"image": images, "intrinsics": intrinsics, "extrinsics": extrinsics, "near": near, "far": far,
               "depth": depth}
    reach = sweep_reach(context, downscale=4, candidates=count)
    # near to far: fx * t * (1/near - 1/far) pixels, a quarter of that in feature pixels
    translation = shift / (FX * SIZE * disparity)
    torch.testing.assert_close(reach.reach, torch.full_like(reach.reach, FX * SIZE * translation * 0.95 / 4))
    # truth / 1.25 to x 1.25: shift * (1.25 - 1 / 1.25) pixels
    assert reach.band.numel() == 2 * SIZE * SIZE - 1
    torch.testing.assert_close(reach.band, torch.full_like(reach.band, shift * (1.25 - 0.8) / 4))
    assert reach.colour_abs_rel < 0.05 and reach.colour_delta > 0.9  # the plane, found (bar the borders)
    assert math.isclose(reach.colour_seen, (SIZE - shift) / SIZE, abs_tol=0.05)  # what the other view sees
    without_depth = sweep_reach({k: v for k, v in context.items() if k != "depth"}, downscale=4, candidates=count)
    assert without_depth.band is None and without_depth.colour_abs_rel is None
    torch.testing.assert_close(without_depth.reach, reach.reach)


def test_validation_batches_carry_the_context_views_ground_truth_depth(synthetic_root):
    """The band needs the context views' depth: val and test batches carry it beside the targets', training
    batches neither (ground truth is never trained on)."""
    from fabric_mvsplat.data import StepTracker, TrainStream, ValidationSource
    from fabric_mvsplat.data.chunk_io import decode_depth, read_chunk

    cfg = compose_cfg(demo_overrides(synthetic_root))
    batch = next(ValidationSource(cfg.dataset, cfg.data_loader.val, StepTracker(), cfg.seed))
    scenes = {scene["key"]: scene for path in sorted((synthetic_root / "test").glob("*.torch"))
              for scene in read_chunk(path)}
    stored = scenes[batch["scene"][0]]["depths"]
    for side in ("context", "target"):
        expected = torch.stack([torch.from_numpy(decode_depth(stored[i])) for i in batch[side]["index"][0].tolist()])
        torch.testing.assert_close(batch[side]["depth"][0], expected)
    training = next(iter(TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)))
    assert "depth" not in training["context"] and "depth" not in training["target"]


def test_the_command_line_reports_every_test_scene(synthetic_root, capsys):
    from fabric_mvsplat.debug.parallax import main

    main(["+experiment=demo", f"dataset.roots=[{synthetic_root}]", "dataset/view_sampler=evaluation"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("feature pixels at 1/4 of 64x64")
    index = json.loads((synthetic_root / "evaluation_index.json").read_text())
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert set(rows) == {key[:20] for key, entry in index.items() if entry is not None}
    for key, entry in index.items():
        row = rows[key[:20]]
        assert row[1] == str(entry["context"]).replace(" ", "")
        reach, band, under, abs_rel, delta, seen = row[2:]
        assert 0 < float(band) < float(reach) and 0 <= float(under[:-1]) <= 100
        assert 0 <= float(abs_rel) and 0 <= float(delta) <= 1 and 0 < float(seen[:-1]) <= 100
    assert lines[-1].startswith(f"all {len(rows)} scenes")


def test_the_command_line_names_a_mistyped_key_in_one_line(synthetic_root, capsys):
    from fabric_mvsplat.debug.parallax import main

    with pytest.raises(SystemExit) as exit_info:
        main(["+experiment=demo", f"dataset.roots=[{synthetic_root}]", "model.encoder.num_depth_candidate=8"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "num_depth_candidate" in error
