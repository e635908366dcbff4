"""The training losses: weights, LPIPS gating and checkpointing, the depth regulariser."""

import pytest
import torch

from lpips_test_weights import write_lpips_test_weights
from fabric_mvsplat.model.loss_config import LossCfg, LossDepthCfg, LossLpipsCfg, LossMseCfg
from fabric_mvsplat.model.losses import LossDepth, LossLpips, LossMse, build_losses


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


def test_build_losses_keeps_the_config_order_and_rejects_none():
    assert list(build_losses(LossCfg(mse=LossMseCfg(), depth=LossDepthCfg()))) == ["mse", "depth"]
    with pytest.raises(ValueError, match="loss"):
        build_losses(LossCfg())
