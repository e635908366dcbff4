"""The training losses. Each returns an already-weighted scalar; the total is their sum."""

import torch
from einops import reduce
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..metrics.psnr_ssim import ssim_map
from .loss_config import LossCfg, LossDepthCfg, LossLpipsCfg, LossMseCfg, LossSsimCfg, check_losses


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
    """Depth smoothness regulariser (not supervision), as the original computes it: the rendered depth clamped
    to [log(near), log(far)] and rescaled to [0, 1], then weight * (mean |d/dx| + mean |d/dy|) of neighbour
    differences (or second differences), optionally edge-aware. Needs `train.depth_mode: log` (the original's,
    whose rendered value is alpha * log(far)) or `log_clamped`."""

    def __init__(self, cfg: LossDepthCfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, rendered: Tensor, target: Tensor, global_step: int, *, depth: Tensor | None = None,
                near: Tensor | None = None, far: Tensor | None = None) -> Tensor:
        """depth [B, V, H, W] rendered in a log mode; target [B, V, 3, H, W]; near, far [B, V]."""
        if depth is None or near is None or far is None:
            raise ValueError("the depth loss needs a rendered depth: set train.depth_mode=log")
        log_near = near.log()[..., None, None]  # [B, V, 1, 1]
        log_far = far.log()[..., None, None]
        depth = torch.maximum(torch.minimum(depth, log_far), log_near)
        depth = (depth - log_near) / (log_far - log_near)  # [B, V, H, W] in [0, 1]

        second = self.cfg.use_second_derivative
        dx, dy = depth.diff(dim=-1), depth.diff(dim=-2)
        if second:
            dx, dy = dx.diff(dim=-1), dy.diff(dim=-2)
        if self.cfg.sigma_image is not None:  # edge-aware: allow depth edges where the image has colour edges
            color_dx, color_dy = target.diff(dim=-1), target.diff(dim=-2)
            if self.cfg.color_gradient == "absolute":
                color_dx, color_dy = color_dx.abs(), color_dy.abs()
            color_dx = reduce(color_dx, "b v c h w -> b v h w", "max")
            color_dy = reduce(color_dy, "b v c h w -> b v h w", "max")
            if second:  # a second difference spans two first differences: the larger colour edge of the two
                color_dx = torch.maximum(color_dx[..., :, 1:], color_dx[..., :, :-1])
                color_dy = torch.maximum(color_dy[..., 1:, :], color_dy[..., :-1, :])
            dx = dx * torch.exp(-self.cfg.sigma_image * color_dx)
            dy = dy * torch.exp(-self.cfg.sigma_image * color_dy)
        return self.cfg.weight * (dx.abs().mean() + dy.abs().mean())


class LossSsim(nn.Module):
    """weight * (1 - mean local SSIM) over all B*V target views (added; the original has no SSIM loss)."""

    def __init__(self, cfg: LossSsimCfg) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, rendered: Tensor, target: Tensor, global_step: int, **_) -> Tensor:
        """rendered, target: [B, V, 3, H, W], H and W at least 11"""
        similarity = ssim_map(target.flatten(0, 1), rendered.flatten(0, 1))  # [(B V), 3, H-10, W-10]
        return self.cfg.weight * (1 - similarity.mean())


def build_losses(cfg: LossCfg) -> nn.ModuleDict:
    """The enabled losses in the config's order (mse, lpips, depth, ssim)."""
    check_losses(cfg)
    classes = {"mse": LossMse, "lpips": LossLpips, "depth": LossDepth, "ssim": LossSsim}
    return nn.ModuleDict({name: classes[name](getattr(cfg, name)) for name in cfg.enabled()})

