"""Ground-truth depth: stored by the synthetic generator, carried into test batches, scored against renders."""

import math

import numpy as np
import pytest
import torch

from fabric_mvsplat.data import TestLoader
from fabric_mvsplat.data.chunk_io import DEPTH_KEY, DEPTH_UNIT, SCENE_KEYS, decode_depth, encode_depth, read_chunk
from fabric_mvsplat.data.config import DataLoaderStageCfg, ViewSamplerEvaluationCfg
from fabric_mvsplat.data.synthetic import SyntheticSpec, generate_synthetic_dataset, random_scene, render_frame, scene_seed
from fabric_mvsplat.metrics import compute_depth_errors
from fabric_mvsplat.model.decoder.rendering import render
from fabric_mvsplat.types import Gaussians
from data_fixtures import dataset_cfg

SIZE = 24


def test_depth_png_round_trip_keeps_a_millimetre_and_marks_unknown_pixels():
    depth = np.array([[1.0, 19.9996], [0.0, np.inf]])
    decoded = decode_depth(encode_depth(depth))
    assert decoded.dtype == np.float32 and decoded.shape == (2, 2)
    assert abs(decoded[0, 0] - 1.0) <= DEPTH_UNIT / 2 and abs(decoded[0, 1] - 19.9996) <= DEPTH_UNIT / 2
    assert decoded[1, 0] == 0 and decoded[1, 1] == 0  # unknown stays unknown
    with pytest.raises(ValueError, match="16-bit"):
        encode_depth(np.full((2, 2), 70.0))


def test_synthetic_chunks_carry_the_ray_cast_depth_into_test_batches(tmp_path):
    generate_synthetic_dataset(tmp_path, SyntheticSpec(train_scenes=1, test_scenes=1, frames=8, height=SIZE,
                                                         width=SIZE, seed=4, context_gap=4), progress=False)
    scene = read_chunk(next((tmp_path / "test").glob("*.torch")))[0]
    # The original's keys keep their types (its loader reads only those); depth is one extra list.
    assert set(scene) == {*SCENE_KEYS, DEPTH_KEY} and len(scene[DEPTH_KEY]) == len(scene["images"])
    cfg = dataset_cfg(tmp_path, height=SIZE, width=SIZE, image_shape=(SIZE, SIZE),
                      view_sampler=ViewSamplerEvaluationCfg(index_path=str(tmp_path / "evaluation_index.json")))
    batch = next(iter(TestLoader(cfg, DataLoaderStageCfg(), 0, 1)))
    truth = random_scene(scene_seed(4, "test", 0), 8, SIZE, SIZE)
    # make_baseline_1 (on by default) divides the world by the context baseline: the depth follows.
    left, right = batch["context"]["index"][0].tolist()
    baseline = np.linalg.norm(truth.c2w[left, :3, 3] - truth.c2w[right, :3, 3])
    # The context views carry theirs too (the plane sweep's reach, debug/parallax.py).
    for side in ("target", "context"):
        for view, frame in enumerate(batch[side]["index"][0].tolist()):
            _, depth = render_frame(truth, frame, SIZE, SIZE)
            stored = batch[side]["depth"][0, view].numpy() * baseline
            assert np.abs(stored - depth).max() <= (DEPTH_UNIT / 2) * 1.01 + 1e-5


def gaussians_on_the_true_surfaces(scene, frames: list[int], scale: float, size: int) -> Gaussians:
    """One small Gaussian per pixel of each frame, at the ray-cast surface point (depth x `scale`)."""
    means, sigmas = [], []
    for frame in frames:
        _, depth = render_frame(scene, frame, size, size)
        k, c2w = scene.intrinsics[frame], scene.c2w[frame]
        u = (np.arange(size) + 0.5) / size
        x, y = np.meshgrid((u - k[0, 2]) / k[0, 0], (u - k[1, 2]) / k[1, 1])
        camera = np.stack([x, y, np.ones_like(x)], axis=-1) * (depth * scale)[..., None]
        means.append(camera.reshape(-1, 3) @ c2w[:3, :3].T + c2w[:3, 3])
        sigmas.append((depth * scale).reshape(-1) / (k[0, 0] * size) * 0.7)  # about one pixel wide
    means_t = torch.from_numpy(np.concatenate(means)).float()[None]
    sigma = torch.from_numpy(np.concatenate(sigmas)).float()
    covariances = (sigma**2)[None, :, None, None] * torch.eye(3)
    count = means_t.shape[1]
    return Gaussians(means_t, covariances, torch.zeros(1, count, 3, 1), torch.full((1, count), 0.98))


def depth_errors_of_true_surfaces(scale: float, size: int = 64) -> tuple[float, float]:
    scene = random_scene(scene_seed(7, "test", 0), 12, size, size)
    context, target = [0, 11], 5
    gaussians = gaussians_on_the_true_surfaces(scene, context, scale, size)
    c2w = torch.from_numpy(scene.c2w[target]).float()[None, None]
    intrinsics = torch.from_numpy(scene.intrinsics[target]).float()[None, None]
    output = render(gaussians, (c2w, intrinsics, torch.full((1, 1), 0.5), torch.full((1, 1), 40.0)), (size, size),
                    depth_mode="expected_depth", backend="torch")
    _, truth = render_frame(scene, target, size, size)
    assert (output.alpha[0] > 0.5).float().mean() > 0.9  # the metric sees most of the image
    abs_rel, delta = compute_depth_errors(torch.from_numpy(truth).float()[None], output.depth[0], output.alpha[0])
    return abs_rel.item(), delta.item()


def test_depth_error_of_gaussians_placed_on_the_true_surfaces():
    """Rendered from Gaussians on the ray-cast surfaces of two context frames, the expected depth at a frame
    between them matches the ray caster's depth there; pushed 1.5x further out, AbsRel grows to about 0.4.

    The floor is not 0: pixel-sized splats (plus the rasterizer's 0.3 px^2 blur) mix each pixel with its
    neighbours, nearer ones first, so slanted surfaces read a little close (measured: AbsRel 0.07 at 64 px,
    0.05 at 96 px, shrinking as 1 / resolution).
    """
    abs_rel, delta = depth_errors_of_true_surfaces(1.0)
    assert abs_rel < 0.08 and delta > 0.93
    scaled_abs_rel, scaled_delta = depth_errors_of_true_surfaces(1.5)
    assert 0.3 < scaled_abs_rel < 0.55 and scaled_abs_rel > 4 * abs_rel and scaled_delta < 0.3


def test_depth_errors_by_true_depth_add_up_pixel_by_pixel():
    """Each scored pixel counted in the bin of its true depth (below near: the first; beyond far: the last),
    checked against a plain loop over the pixels."""
    from fabric_mvsplat.metrics import depth_error_sums_by_true_depth, depth_errors_by_true_depth, true_depth_edges

    edges = true_depth_edges(1.0, 20.0)
    assert len(edges) == 7 and edges[0] == pytest.approx(1.0) and edges[-1] == pytest.approx(20.0)
    assert edges[1] / edges[0] == pytest.approx(edges[-1] / edges[-2])  # the same depth ratio in every bin
    generator = torch.Generator().manual_seed(0)
    truth = torch.exp(torch.rand(2, 9, 11, generator=generator) * math.log(30)) * 0.7  # 0.7-21: both ends beyond
    truth[0, 0, :3] = 0  # unknown
    predicted = truth * torch.exp(torch.randn(2, 9, 11, generator=generator) * 0.3)
    alpha = torch.rand(2, 9, 11, generator=generator)
    sums = depth_error_sums_by_true_depth(truth, predicted, alpha, edges)
    expected = [[0.0] * 4 for _ in range(6)]
    for t, p, a in zip(truth.flatten().tolist(), predicted.flatten().tolist(), alpha.flatten().tolist()):
        if t <= 0 or a <= 0.5:
            continue
        bin_ = min(max(sum(t >= e for e in edges[1:-1]), 0), 5)
        for i, value in enumerate((1.0, abs(p - t) / t, math.log(p / t), float(max(p / t, t / p) < 1.25))):
            expected[bin_][i] += value
    torch.testing.assert_close(torch.tensor(sums, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))
    rows = depth_errors_by_true_depth(sums, edges)
    assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    scored = [row for row in rows if row["abs_rel"] is not None]
    assert scored and all(row["ratio"] > 0 and 0 <= row["delta_1_25"] <= 1 for row in scored)
    # twice as far everywhere: AbsRel 1, predicted / true 2, nothing within a factor 1.25
    doubled = depth_errors_by_true_depth(depth_error_sums_by_true_depth(truth, 2 * truth, alpha, edges), edges)
    for row in doubled:
        if row["abs_rel"] is not None:
            assert (row["abs_rel"], row["ratio"], row["delta_1_25"]) == pytest.approx((1.0, 2.0, 0.0))


def test_depth_errors_follow_their_definitions_and_skip_uncovered_pixels():
    truth = torch.tensor([[[2.0, 4.0], [0.0, 8.0]]])  # one pixel without ground truth
    predicted = torch.tensor([[[3.0, 4.0], [5.0, 100.0]]])
    alpha = torch.tensor([[[1.0, 1.0], [1.0, 0.2]]])  # the last pixel is barely covered: not scored
    abs_rel, delta = compute_depth_errors(truth, predicted, alpha)
    assert abs_rel.item() == pytest.approx((0.5 + 0.0) / 2)
    assert delta.item() == pytest.approx(0.5)  # 3/2 = 1.5 fails, 4/4 passes
    nothing, _ = compute_depth_errors(truth, predicted, torch.zeros_like(alpha))
    assert math.isnan(nothing.item())


def test_validation_logs_depth_errors_where_the_scene_has_ground_truth(tmp_path):
    from fabric_mvsplat.data import StepTracker, ValidationSource
    from fabric_mvsplat.build import make_model
    from loop_fixtures import compose_cfg

    generate_synthetic_dataset(tmp_path, SyntheticSpec(train_scenes=1, test_scenes=1, frames=24, height=32,
                                                         width=32, seed=6), progress=False)
    cfg = compose_cfg(["+experiment=demo", f"dataset.roots=[{tmp_path}]", "dataset.image_shape=[32,32]",
                       "model.encoder.d_feature=32", "model.encoder.num_depth_candidates=8",
                       "model.encoder.costvolume_unet_feat_dim=32", "train.video_frames=2"])
    torch.manual_seed(0)
    model = make_model(cfg).eval()
    batch = next(ValidationSource(cfg.dataset, cfg.data_loader.val, StepTracker(), cfg.seed))
    assert batch["target"]["depth"].shape == (1, 4, 32, 32)  # the bounded sampler's 4 targets, with depth
    output = model.validation_step(batch, global_step=0)
    assert 0 <= output.scalars["val/depth_abs_rel"] and 0 <= output.scalars["val/depth_delta_1_25"] <= 1
    del batch["target"]["depth"]  # a scene without ground truth omits them
    assert "val/depth_abs_rel" not in model.validation_step(batch, global_step=0).scalars


def test_patch_crop_keeps_ground_truth_depth_aligned_with_the_image():
    """A 40x40 batch is centre-cropped to 32x32 for the encoder: the true depth must be cropped the same way,
    or depth errors compare misaligned (or differently sized) maps."""
    from fabric_mvsplat.model.encoder.encoder import crop_views_to_patch

    depth = torch.arange(40 * 40, dtype=torch.float32).reshape(1, 1, 40, 40).expand(1, 2, 40, 40)
    views = {"image": depth[:, :, None].expand(1, 2, 3, 40, 40), "depth": depth,
             "intrinsics": torch.eye(3).expand(1, 2, 3, 3)}
    cropped = crop_views_to_patch(views, patch_size=16)
    assert cropped["depth"].shape == (1, 2, 32, 32)
    assert torch.equal(cropped["depth"], cropped["image"][:, :, 0])
