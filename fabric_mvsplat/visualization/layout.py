"""Image grids and colour maps for TensorBoard and saved videos (plain torch, no plotting library)."""

import torch
from torch import Tensor

# A perceptually ordered dark-blue -> cyan -> green -> yellow -> red ramp (our own stops),
# close enough to "turbo" for reading depth maps at a glance.
_DEPTH_STOPS = torch.tensor(
    [
        [0.19, 0.07, 0.23],
        [0.16, 0.47, 0.93],
        [0.10, 0.85, 0.75],
        [0.55, 0.98, 0.25],
        [0.98, 0.73, 0.20],
        [0.80, 0.20, 0.05],
        [0.48, 0.02, 0.01],
    ]
)


def apply_color_map(values: Tensor) -> Tensor:
    """values [...] in [0, 1] -> RGB [..., 3, H, W]-compatible [..., 3] colours."""
    stops = _DEPTH_STOPS.to(values.device, values.dtype)
    position = values.clamp(0, 1) * (len(stops) - 1)
    lower = position.floor().long().clamp(max=len(stops) - 2)
    fraction = (position - lower)[..., None]
    return stops[lower] * (1 - fraction) + stops[lower + 1] * fraction


def colorize_depth(depth: Tensor, near: Tensor | float, far: Tensor | float) -> Tensor:
    """depth [..., H, W] (positive) -> [..., 3, H, W], log-scaled between near and far."""
    near_t = torch.as_tensor(near, dtype=depth.dtype, device=depth.device)
    far_t = torch.as_tensor(far, dtype=depth.dtype, device=depth.device)
    log_near, log_far = near_t.log(), far_t.log()
    normalized = (depth.clamp_min(1e-6).log() - log_near) / (log_far - log_near)
    return apply_color_map(normalized).movedim(-1, -3)


def hcat(images: list[Tensor], gap: int = 2, fill: float = 1.0) -> Tensor:
    """[3, H_i, W_i] images side by side, top-aligned, separated by `gap` columns of `fill`."""
    height = max(image.shape[-2] for image in images)
    parts = []
    for i, image in enumerate(images):
        padded = torch.full((3, height, image.shape[-1]), fill, dtype=image.dtype, device=image.device)
        padded[:, : image.shape[-2]] = image
        parts.append(padded)
        if i < len(images) - 1:
            parts.append(torch.full((3, height, gap), fill, dtype=image.dtype, device=image.device))
    return torch.cat(parts, dim=-1)


def vcat(images: list[Tensor], gap: int = 2, fill: float = 1.0) -> Tensor:
    """[3, H_i, W_i] images stacked vertically, left-aligned."""
    return hcat([image.transpose(-1, -2) for image in images], gap, fill).transpose(-1, -2)


def comparison_grid(context: Tensor, target: Tensor, rendered: Tensor, depth: Tensor | None = None) -> Tensor:
    """One row each: contexts [Vc,3,H,W] | ground-truth targets [Vt,3,H,W] | renders | depth [Vt,3,H,W]."""
    rows = [hcat(list(context)), hcat(list(target)), hcat(list(rendered.clamp(0, 1)))]
    if depth is not None:
        rows.append(hcat(list(depth)))
    return vcat(rows, gap=4)
