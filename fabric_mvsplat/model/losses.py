"""The training losses (spec §8.1). Each returns an already-weighted scalar; the total is their sum."""

import torch
from einops import reduce
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .loss_config import LossCfg, LossDepthCfg, LossLpipsCfg, LossMseCfg, check_losses


class LossMse(nn.Module):
    def __init__(self, cfg: LossMseCfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, rendered: Tensor, target: Tensor, global_step: int, **_) -> Tensor:
        """rendered, target: [B, V, 3, H, W]"""
        return self.cfg.weight * ((rendered - target) ** 2).mean()


class LossLpips(nn.Module):
    """weight * mean LPIPS(VGG) over all B*V target views, zero before `apply_after_step`.

    The network is frozen and kept out of the state_dict (the original turns it into
    non-persistent buffers), so checkpoints hold only `encoder.*` keys.
    """

    def __init__(self, cfg: LossLpipsCfg) -> None:
        super().__init__()
        from ..metrics.lpips import load_lpips

        self.cfg = cfg
        self.lpips = load_lpips(cfg.weights)  # names the keys and files when weights is null or incomplete

    def forward(self, rendered: Tensor, target: Tensor, global_step: int, **_) -> Tensor:
        if global_step < self.cfg.apply_after_step:
            return torch.zeros((), device=rendered.device, dtype=rendered.dtype)
        flat_rendered = rendered.flatten(0, 1)  # [(B V), 3, H, W]
        flat_target = target.flatten(0, 1)
        if self.cfg.gradient_checkpointing and torch.is_grad_enabled():
            distance = checkpoint(self.lpips, flat_rendered, flat_target, normalize=True, use_reentrant=False)
        else:
            distance = self.lpips(flat_rendered, flat_target, normalize=True)
        return self.cfg.weight * distance.mean()


class LossDepth(nn.Module):
    """Depth smoothness regulariser (not supervision): penalises |d/dx| + |d/dy| of the rendered
    log depth rescaled to [0, 1] between log(near) and log(far). Needs `train.depth_mode: log`."""

    def __init__(self, cfg: LossDepthCfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, rendered: Tensor, target: Tensor, global_step: int, *, depth: Tensor | None = None,
                near: Tensor | None = None, far: Tensor | None = None) -> Tensor:
        if depth is None or near is None or far is None:
            raise ValueError("the depth loss needs a rendered depth: set train.depth_mode=log")
        log_near = near.log()[..., None, None]  # [B, V, 1, 1]
        log_far = far.log()[..., None, None]
        depth = torch.maximum(torch.minimum(depth, log_far), log_near)
        depth = (depth - log_near) / (log_far - log_near)  # [B, V, H, W] in [0, 1]

        dx = depth[..., :, 1:] - depth[..., :, :-1]
        dy = depth[..., 1:, :] - depth[..., :-1, :]
        if self.cfg.use_second_derivative:
            dx = dx[..., :, 1:] - dx[..., :, :-1]
            dy = dy[..., 1:, :] - dy[..., :-1, :]
        if self.cfg.sigma_image is not None:
            # Edge-aware: allow depth edges where the image has colour edges.
            color_dx = reduce((target[..., :, 1:] - target[..., :, :-1]).abs(), "b v c h w -> b v h w", "max")
            color_dy = reduce((target[..., 1:, :] - target[..., :-1, :]).abs(), "b v c h w -> b v h w", "max")
            crop = 2 if self.cfg.use_second_derivative else 1
            dx = dx * torch.exp(-self.cfg.sigma_image * color_dx[..., :, crop - 1:dx.shape[-1] + crop - 1])
            dy = dy * torch.exp(-self.cfg.sigma_image * color_dy[..., crop - 1:dy.shape[-2] + crop - 1, :])
        return self.cfg.weight * (dx.abs().mean() + dy.abs().mean())


def build_losses(cfg: LossCfg) -> nn.ModuleDict:
    """The enabled losses in the config's order (mse, lpips, depth)."""
    check_losses(cfg)
    losses = nn.ModuleDict()
    if cfg.mse is not None:
        losses["mse"] = LossMse(cfg.mse)
    if cfg.lpips is not None:
        losses["lpips"] = LossLpips(cfg.lpips)
    if cfg.depth is not None:
        losses["depth"] = LossDepth(cfg.depth)
    return losses

