"""The training losses: weights, LPIPS gating and checkpointing, the depth regulariser, the SSIM loss."""

import pytest
import torch

from lpips_test_weights import write_lpips_test_weights
from skimage.metrics import structural_similarity

from fabric_mvsplat.errors import ConfigError
from fabric_mvsplat.metrics.psnr_ssim import ssim_map
from fabric_mvsplat.model.loss_config import LossCfg, LossDepthCfg, LossLpipsCfg, LossMseCfg, LossSsimCfg
from fabric_mvsplat.model.losses import LossDepth, LossLpips, LossMse, LossSsim, build_losses


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips")
    write_lpips_test_weights(path, seed=0)
    return path


def images(seed: int) -> torch.Tensor:
    return torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # [B, V, 3, H, W]


def test_mse_is_weighted_mean_squared_error():
    rendered, target = images(0), images(1)
    loss = LossMse(LossMseCfg(weight=2.0))(rendered, target, global_step=0)
    assert torch.allclose(loss, 2.0 * ((rendered - target) ** 2).mean())


def test_lpips_waits_for_apply_after_step_and_checkpointing_keeps_gradients(lpips_dir):
    target = images(1)
    gradients = []
    for checkpointing in (False, True):
        loss_fn = LossLpips(LossLpipsCfg(weight=0.05, apply_after_step=10, weights=str(lpips_dir),
                                         gradient_checkpointing=checkpointing))
        rendered = images(0).requires_grad_()
        assert loss_fn(rendered, target, global_step=9).item() == 0.0
        loss = loss_fn(rendered, target, global_step=10)
        assert loss.item() > 0
        loss.backward()
        gradients.append(rendered.grad)
    assert torch.allclose(gradients[0], gradients[1], atol=1e-7)


def test_lpips_without_weights_says_which_key_and_files():
    with pytest.raises(FileNotFoundError, match=r"loss\.lpips\.weights.*vgg16\.pth.*vgg\.pth"):
        LossLpips(LossLpipsCfg(weights=None))


def test_depth_regulariser_penalises_rough_depth_only():
    near, far = torch.ones(1, 2), torch.full((1, 2), 100.0)
    loss_fn = LossDepth(LossDepthCfg(weight=1.0))
    flat = torch.full((1, 2, 16, 16), 2.0)
    rough = flat + torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    target = images(0)[..., :16, :16]
    assert loss_fn(target, target, 0, depth=flat, near=near, far=far).item() == 0.0
    assert loss_fn(target, target, 0, depth=rough, near=near, far=far).item() > 0.0
    with pytest.raises(ValueError, match="depth_mode"):
        loss_fn(target, target, 0)


def original_depth_loss(depth, color, near, far, weight, sigma_image, second):
    """The original's LossDepth.forward transcribed in numpy: clamp to [log near, log far], rescale, np.diff
    neighbours; edge weights from the channel-max of the SIGNED colour differences (with second differences,
    the larger of the two neighbouring ones)."""
    import numpy as np

    log_near, log_far = np.log(near)[..., None, None], np.log(far)[..., None, None]
    depth = np.maximum(np.minimum(depth, log_far), log_near)
    depth = (depth - log_near) / (log_far - log_near)
    dx, dy = np.diff(depth, axis=-1), np.diff(depth, axis=-2)
    if second:
        dx, dy = np.diff(dx, axis=-1), np.diff(dy, axis=-2)
    if sigma_image is not None:
        cx, cy = np.diff(color, axis=-1).max(axis=2), np.diff(color, axis=-2).max(axis=2)
        if second:
            cx = np.maximum(cx[..., :, 1:], cx[..., :, :-1])
            cy = np.maximum(cy[..., 1:, :], cy[..., :-1, :])
        dx, dy = dx * np.exp(-cx * sigma_image), dy * np.exp(-cy * sigma_image)
    return weight * (np.abs(dx).mean() + np.abs(dy).mean())


@pytest.mark.parametrize("sigma_image, second", [(None, False), (None, True), (3.0, False), (3.0, True)])
def test_depth_loss_equals_the_originals(sigma_image, second):
    generator = torch.Generator().manual_seed(4)
    near, far = torch.full((2, 3), 1.0), torch.full((2, 3), 100.0)
    depth = torch.rand(2, 3, 12, 14, generator=generator, dtype=torch.float64) * 6 - 0.5  # some outside [0, log 100]
    color = torch.rand(2, 3, 3, 12, 14, generator=generator, dtype=torch.float64)
    loss_fn = LossDepth(LossDepthCfg(weight=0.25, sigma_image=sigma_image, use_second_derivative=second))
    ours = loss_fn(color, color, 0, depth=depth, near=near, far=far).item()
    expected = original_depth_loss(depth.numpy(), color.numpy(), near.numpy(), far.numpy(), 0.25, sigma_image, second)
    assert ours == pytest.approx(expected, rel=1e-12)
    if sigma_image is not None:  # the absolute variant weighs every colour edge down, so it is smaller
        absolute = LossDepth(LossDepthCfg(weight=0.25, sigma_image=sigma_image, use_second_derivative=second,
                                          color_gradient="absolute"))
        assert absolute(color, color, 0, depth=depth, near=near, far=far).item() < ours


def test_ssim_map_is_scikit_images_ssim_and_differentiable():
    # the loss and the test score must measure the same thing: scikit-image's full SSIM image, in float64
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 23, 30, generator=generator, dtype=torch.float64)
    rendered = (0.7 * target + 0.3 * torch.rand(2, 3, 23, 30, generator=generator, dtype=torch.float64))
    rendered.requires_grad_(True)
    ours = ssim_map(target, rendered)
    assert ours.shape == (2, 3, 13, 20)
    for i in range(2):
        _, full = structural_similarity(target[i].numpy(), rendered[i].detach().numpy(), win_size=11,
                                        gaussian_weights=True, channel_axis=0, data_range=1.0, full=True)
        # scikit-image computes every pixel and averages only those 5 px from the border
        assert torch.allclose(ours[i], torch.from_numpy(full[:, 5:-5, 5:-5]), atol=1e-10)
    ours.mean().backward()
    assert rendered.grad is not None and rendered.grad.abs().sum() > 0


def test_ssim_loss_is_zero_for_the_target_and_weighs_a_faint_shift_more_than_mse():
    # a faint texture moved by one pixel: MSE barely sees it, SSIM does (why the demo trains with both)
    row = 0.5 + 0.02 * torch.sin(torch.arange(48, dtype=torch.float64) * 0.8)
    target = row.expand(1, 1, 3, 48, 48).clone()  # [B, V, 3, H, W]
    shifted = target.roll(1, dims=-1)
    ssim_loss = LossSsim(LossSsimCfg(weight=1.0))
    assert ssim_loss(target, target, global_step=0).item() == pytest.approx(0.0, abs=1e-12)
    mse = ((shifted - target) ** 2).mean().item()
    assert ssim_loss(shifted, target, global_step=0).item() > 100 * mse  # 0.078 against 1.2e-4
    assert LossSsim(LossSsimCfg(weight=0.5))(shifted, target, global_step=0).item() == pytest.approx(
        0.5 * ssim_loss(shifted, target, global_step=0).item())
    with pytest.raises(ConfigError, match="weight"):
        LossSsimCfg(weight=-1.0)


def test_build_losses_keeps_the_config_order_and_rejects_none():
    assert list(build_losses(LossCfg(mse=LossMseCfg(), depth=LossDepthCfg()))) == ["mse", "depth"]
    assert list(build_losses(LossCfg(ssim=LossSsimCfg(), mse=LossMseCfg()))) == ["mse", "ssim"]
    with pytest.raises(ValueError, match="loss"):
        build_losses(LossCfg())
