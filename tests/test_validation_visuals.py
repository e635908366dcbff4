"""Validation visuals as the original's: eased, loop-reversed interpolation and wobble videos, the projection and
camera images."""

import math

import pytest
import torch
from conftest import demo_overrides
from loop_fixtures import compose_cfg

from fabric_mvsplat.data import StepTracker, TrainStream
from fabric_mvsplat.build import make_model
from fabric_mvsplat.visualization.validation_3d import camera_image, projection_cameras

pytestmark = pytest.mark.xdist_group("demo_run")  # shares the session's synthetic dataset with test_end_to_end


@pytest.fixture(scope="module")
def model_and_batch(synthetic_root):
    cfg = compose_cfg(demo_overrides(synthetic_root, "train.video_frames=5"))
    torch.manual_seed(0)
    model = make_model(cfg).eval()
    stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
    return model, next(iter(stream))


def original_eased_times(num_frames: int) -> torch.Tensor:
    """The original's render_video_generic: t = linspace(0, 1, n), then (cos(pi (t + 1)) + 1) / 2."""
    t = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    return (torch.cos(torch.pi * (t + 1)) + 1) / 2


def record_cameras(model, monkeypatch) -> list[torch.Tensor]:
    calls = []
    forward = model.decoder.forward

    def recording(gaussians, extrinsics, *args, **kwargs):
        calls.append(extrinsics.detach().double())
        return forward(gaussians, extrinsics, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "forward", recording)
    return calls


def assert_loop_reversed(video: torch.Tensor, num_frames: int) -> None:
    """The original's loop_reverse: frames 0..n-1, then n-2..1 (the ends are not repeated)."""
    assert video.shape[0] == 2 * num_frames - 2
    for k in range(1, num_frames - 1):
        assert torch.equal(video[k], video[2 * num_frames - 2 - k])


@torch.no_grad()
def test_wobble_video_is_the_originals_eased_loop_reversed_circle(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    context = model.data_shim(batch)["context"]
    gaussians = model.encode(context, 0)
    cameras = record_cameras(model, monkeypatch)
    video = model.render_video_wobble(gaussians, context, (32, 32))
    assert_loop_reversed(video, 10)  # 60 frames in the original = 2 x its 30 interpolation frames
    c2w = context["extrinsics"][0].double()
    t = original_eased_times(10)
    radius = 0.25 * (c2w[0, :3, 3] - c2w[1, :3, 3]).norm()
    # generate_wobble: c2w_0 @ translation (sin(2 pi t) r t, -cos(2 pi t) r t, 0) in camera 0's frame
    offsets = torch.stack([torch.sin(2 * torch.pi * t) * radius * t, -torch.cos(2 * torch.pi * t) * radius * t,
                           torch.zeros_like(t)], dim=-1)
    expected = c2w[0, :3, 3] + offsets @ c2w[0, :3, :3].T
    assert torch.allclose(cameras[0][0, :, :3, 3], expected, atol=1e-5)
    assert torch.allclose(cameras[0][0, :, :3, :3], c2w[0, :3, :3].expand(10, 3, 3), atol=1e-6)


@torch.no_grad()
def test_interpolation_video_eases_from_context_0_to_1_and_back(model_and_batch, monkeypatch):
    model, batch = model_and_batch
    batch = model.data_shim(batch)
    context, target = batch["context"], batch["target"]
    gaussians = model.encode(context, 0)
    cameras = record_cameras(model, monkeypatch)
    video = model.render_video_interpolation(gaussians, context, target, (32, 32))
    assert_loop_reversed(video, 5)
    path = cameras[0][0]
    c2w = context["extrinsics"][0].double()
    assert torch.allclose(path[0], c2w[0], atol=1e-5) and torch.allclose(path[-1], c2w[1], atol=1e-5)
    steps = (path[1:, :3, 3] - path[:-1, :3, 3]).norm(dim=-1)
    assert steps[0] < steps[1] and steps[-1] < steps[-2]  # eased in and out
    # More than two contexts: the original interpolates from context 0 to target 0.
    three = {key: torch.cat([value, value[:, :1]], dim=1) for key, value in context.items()}
    model.render_video_interpolation(gaussians, three, target, (32, 32))
    assert torch.allclose(cameras[-1][0, -1], target["extrinsics"][0, 0].double(), atol=1e-5)


@torch.no_grad()
def test_validation_logs_the_projection_and_camera_images(model_and_batch):
    model, batch = model_and_batch
    output = model.validation_step(batch, 0)
    assert set(output.images) == {"comparison", "projection", "cameras"}
    for name in ("projection", "cameras"):  # three 256-px panels under 14-px labels, 4 px apart
        assert output.images[name].shape == (3, 14 + 256, 3 * 256 + 2 * 4), name
    assert output.images["projection"][:, 14:].amax() > 0.05  # the Gaussians are in view
    assert set(output.videos) == {"interpolation", "wobble"}


def test_projection_cameras_frame_the_cube_around_the_gaussians():
    means = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 1.0, 0.5], [1.0, 4.0, 3.0]]])
    extrinsics, intrinsics, near, far = projection_cameras(means)
    # The cube: midpoint (1, 2, 1.5), side 4 x 1.1 = 4.4.
    low = torch.tensor([1.0, 2.0, 1.5]) - 2.2
    for look in range(3):
        w2c = extrinsics[0, look].inverse()
        corner = low.clone()  # the near face's top-left corner (right and down axes at their minimum)
        camera_point = w2c[:3, :3] @ corner + w2c[:3, 3]
        uv = (intrinsics[0, look] @ (camera_point / camera_point[2]))[:2]
        assert torch.allclose(uv, torch.zeros(2), atol=1e-5), look
        assert math.isclose(camera_point[2].item(), near[0, look].item(), rel_tol=1e-5)
        assert math.isclose(far[0, look].item() - near[0, look].item(), 4.4, rel_tol=1e-5)
        assert math.isclose(math.degrees(2 * math.atan(0.5 / intrinsics[0, look, 0, 0].item())), 10.0, rel_tol=1e-6)


def test_camera_image_draws_contexts_white_and_targets_red():
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 3.0  # a second camera 3 units to the right
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).expand(2, 3, 3)
    image = camera_image(c2w, k, torch.ones(2), torch.full((2,), 5.0), torch.tensor([[1.0, 1, 1], [1.0, 0, 0]]))
    panels = image[:, 14:, 2 * 260:]  # the XY panel (looking along Z), where the two cameras lie apart
    assert panels.shape[-1] == 256
    white = (panels > 0.9).all(dim=0)
    red = (panels[0] > 0.9) & (panels[1] < 0.1) & (panels[2] < 0.1)
    grey = ((panels - 0.25).abs() < 0.02).all(dim=0)
    assert white.any() and red.any() and grey.any()
