"""A tiled Gaussian rasterizer in plain PyTorch: the CPU backend, differentiable with autograd.

Same rules as the CUDA rasterizers: per pixel, the Gaussians whose alpha =
min(0.99, opacity exp(-power)) reaches 1/255, composited front to back in camera-z order, stopping
before the Gaussian that would take transmittance below 1e-4. Unlike the original (a 3-sigma
circle), a Gaussian's footprint is the exact box of its alpha >= 1/255 ellipse (as gsplat's), so
the image does not depend on the tiling and equals a dense per-pixel evaluation.

How it stays fast (the same plan as gsplat's kernel, written as batched tensor ops):
1. bin: every visible Gaussian's footprint box is cut into small square tiles (4x4 pixels); the
   (image, tile, Gaussian) intersections are sorted by tile, then depth.
2. composite in depth blocks: all tiles advance together through their depth-sorted lists, `block`
   Gaussians at a time. A block is one dense [tiles, block, pixels-per-tile] evaluation (no
   per-pixel sort, no scatter): alpha, a cumulative sum of log(1 - alpha) along depth for the
   transmittance, and a batched matrix product for the colour. Between blocks a tile drops out once
   its list ends or all its pixels have stopped, which is most of the work on opaque scenes.
   Large renders checkpoint each block, so backward memory stays one block's, not the image's.
"""

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN, ProjectedGaussians

TILE_SIZE = 4  # small tiles: a tile's pixels are evaluated densely, so a tight fit beats fewer tiles
DEPTH_BLOCK = 16  # Gaussians per tile per step; tiles that have stopped are dropped between steps
CHECKPOINT_ELEMENTS = 1 << 24  # above this many (pixel, Gaussian) slots, blocks are recomputed in backward
LOG_TRANSMITTANCE_MIN = math.log(TRANSMITTANCE_MIN)


class TileBins:
    """(image, tile, Gaussian) intersections grouped by tile, front to back within a tile."""

    def __init__(self, gaussian: Tensor, counts: Tensor, tiles_x: int, tiles_y: int):
        self.gaussian = gaussian  # [M] flat index image * N + gaussian, sorted by (tile, depth)
        self.counts = counts  # [T] intersections per tile, T = images * tiles_y * tiles_x
        self.starts = torch.cumsum(counts, 0) - counts  # [T] first intersection of each tile
        self.tiles_x, self.tiles_y = tiles_x, tiles_y


def footprint_boxes(means2d: Tensor, cov2d_diag: Tensor, opacities: Tensor, usable: Tensor,
                    image_shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Inclusive pixel box [x_lo, x_hi] x [y_lo, y_hi] covering every pixel centre where alpha can reach
    1/255, and a mask of Gaussians whose box meets the image. All inputs [..., N(, 2)], no grad."""
    height, width = image_shape
    level = 2 * torch.log((opacities * 255).clamp_min(1.0))  # d^T conic d <= level inside the ellipse
    radius = (level[..., None] * cov2d_diag).sqrt() * (1 + 1e-5) + 1e-3  # margin: alpha test decides
    low = torch.ceil(means2d - radius - 0.5)
    high = torch.floor(means2d + radius - 0.5)
    # Clamped to the image; a box entirely outside ends up with lo > hi.
    x_lo, y_lo = low[..., 0].clamp(0, width), low[..., 1].clamp(0, height)
    x_hi, y_hi = high[..., 0].clamp(-1, width - 1), high[..., 1].clamp(-1, height - 1)
    hit = usable & (x_lo <= x_hi) & (y_lo <= y_hi) & torch.isfinite(means2d).all(-1)
    return x_lo.long(), x_hi.long(), y_lo.long(), y_hi.long(), hit


@torch.no_grad()
def bin_to_tiles(means2d: Tensor, cov2d_diag: Tensor, opacities: Tensor, depths: Tensor, visible: Tensor,
                 image_shape: tuple[int, int], tile_size: int = TILE_SIZE) -> TileBins:
    """[I, N] Gaussians -> their intersections with tile_size x tile_size tiles, sorted by (image, tile, depth)."""
    height, width = image_shape
    num_images, num_gaussians = depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    usable = visible & (opacities >= ALPHA_MIN)
    x_lo, x_hi, y_lo, y_hi, hit = footprint_boxes(means2d, cov2d_diag, opacities, usable, image_shape)

    # Visible Gaussians in (image, depth) order; a stable sort by tile then keeps depth order per tile.
    order = torch.argsort(torch.where(hit, depths, torch.full_like(depths, math.inf)), dim=1, stable=True)
    image, rank = hit.gather(1, order).nonzero(as_tuple=True)
    gaussian = image * num_gaussians + order[image, rank]
    tile_x_lo = x_lo.flatten().index_select(0, gaussian) // tile_size
    tile_y_lo = y_lo.flatten().index_select(0, gaussian) // tile_size
    tiles_w = x_hi.flatten().index_select(0, gaussian) // tile_size - tile_x_lo + 1
    tiles_h = y_hi.flatten().index_select(0, gaussian) // tile_size - tile_y_lo + 1
    # Enumerate each box's tiles: one row per intersection, owner = the Gaussian's row above.
    per_gaussian = tiles_w * tiles_h
    owner = torch.repeat_interleave(torch.arange(gaussian.shape[0], device=gaussian.device), per_gaussian)
    first_tile = (image * tiles_y + tile_y_lo) * tiles_x + tile_x_lo
    position = torch.arange(owner.shape[0], device=owner.device) - (torch.cumsum(per_gaussian, 0) - per_gaussian).index_select(0, owner)
    width_of_owner = tiles_w.index_select(0, owner)
    tile = first_tile.index_select(0, owner) + (position // width_of_owner) * tiles_x + position % width_of_owner
    tile, sort = torch.sort(tile, stable=True)
    counts = torch.bincount(tile, minlength=num_images * tiles_x * tiles_y)
    return TileBins(gaussian.index_select(0, owner.index_select(0, sort)), counts, tiles_x, tiles_y)


def composite_block(gaussians: Tensor, origin_x: Tensor, origin_y: Tensor, log_t: Tensor,
                    tile_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """One depth block of every active tile.

    gaussians [A, K, 6 + D] = (u, v, conic a, b, c, opacity, features) for K depth slots of A tiles
    (padding rows have opacity 0); origin_x/y [A, 1] the tiles' first pixel centres; log_t [A, P] the
    log transmittance of every pair in front (stopped pairs included, so a stopped pixel stays stopped).
    -> features [A, P, D] of this block, log_t after the block [A, P], log(1 - alpha) summed over the
    pairs that contributed [A, P] (the final transmittance).
    """
    offsets = torch.arange(tile_size, dtype=gaussians.dtype, device=gaussians.device)
    dx = (gaussians[..., 0] - origin_x)[..., None] - offsets  # [A, K, S]: u - pixel centre x
    dy = (gaussians[..., 1] - origin_y)[..., None] - offsets
    # power[a, k, y, x] = (a dx^2 + c dy^2) / 2 + b dx dy, built from per-row and per-column terms.
    half_a_dx2 = 0.5 * gaussians[..., 2, None] * dx * dx
    half_c_dy2 = 0.5 * gaussians[..., 4, None] * dy * dy
    b_dy = gaussians[..., 3, None] * dy
    power = (half_c_dy2[..., :, None] + half_a_dx2[..., None, :]) + b_dy[..., :, None] * dx[..., None, :]
    alpha = (gaussians[..., 5, None, None] * torch.exp(-power)).clamp_max(ALPHA_MAX)
    alpha = torch.where((alpha >= ALPHA_MIN) & (power >= 0), alpha, 0.0).flatten(2)  # [A, K, P]
    log_keep = torch.log1p(-alpha)
    log_t_after = torch.cumsum(log_keep, 1) + log_t[:, None, :]
    # The pixel stops before the pair that would take T below 1e-4; T only falls, so every later pair too.
    contributes = log_t_after >= LOG_TRANSMITTANCE_MIN
    weight = torch.where(contributes, alpha * torch.exp(log_t_after - log_keep), 0.0)
    features = torch.bmm(weight.transpose(1, 2), gaussians[..., 6:])
    kept_log_t = torch.where(contributes, log_keep, 0.0).sum(1)
    return features, log_t_after[:, -1], kept_log_t


def rasterize_torch(projected: ProjectedGaussians, opacities: Tensor, features: Tensor, image_shape: tuple[int, int],
                    background: Tensor, *, tile_size: int | None = None, block: int | None = None,
                    checkpoint_elements: int | None = None) -> tuple[Tensor, Tensor]:
    """Composite I images of N Gaussians.

    projected: means2d [I, N, 2], conics [I, N, 3], depths [I, N] (sort key), visible [I, N], cov2d_diag
    [I, N, 2]; opacities [I, N], features [I, N, D], background [D] or [I, D]
    -> features [I, H, W, D] (background blended by the final transmittance), alpha [I, H, W].
    tile_size, block, checkpoint_elements: TILE_SIZE, DEPTH_BLOCK, CHECKPOINT_ELEMENTS when None (read at call
    time, so a test can set the module's values for every render).
    """
    tile_size = TILE_SIZE if tile_size is None else tile_size
    block = DEPTH_BLOCK if block is None else block
    checkpoint_elements = CHECKPOINT_ELEMENTS if checkpoint_elements is None else checkpoint_elements
    means2d, conics, depths = projected.means2d, projected.conics, projected.depths
    visible, cov2d_diag = projected.visible, projected.cov2d_diag
    height, width = image_shape
    num_images, num_gaussians, channels = features.shape
    bins = bin_to_tiles(means2d.detach(), cov2d_diag.detach(), opacities.detach(), depths.detach(), visible,
                        image_shape, tile_size)
    num_tiles, pixels_per_tile = bins.counts.shape[0], tile_size * tile_size
    packed = torch.cat([means2d, conics, opacities[..., None], features], dim=-1).flatten(0, 1)
    # One all-zero row at the end: the Gaussian of padding slots (opacity 0 -> alpha 0).
    packed = torch.cat([packed, packed.new_zeros(1, packed.shape[1])])
    gaussian = torch.cat([bins.gaussian, bins.gaussian.new_full((1,), packed.shape[0] - 1)])
    padding_slot = bins.gaussian.shape[0]
    tile_index = torch.arange(num_tiles, device=packed.device)
    origin_x = ((tile_index % bins.tiles_x) * tile_size).to(packed.dtype) + 0.5
    origin_y = ((tile_index // bins.tiles_x % bins.tiles_y) * tile_size).to(packed.dtype) + 0.5
    longest = int(bins.counts.max()) if num_tiles else 0
    needs_grad = torch.is_grad_enabled() and packed.requires_grad
    use_checkpoint = needs_grad and num_tiles * pixels_per_tile * longest > checkpoint_elements

    log_t = packed.new_zeros(num_tiles, pixels_per_tile)  # running, over every pair met so far
    active_tiles, block_features, block_kept = [], [], []
    depth_slot = torch.arange(block, device=packed.device)
    for first in range(0, longest, block):
        active = ((bins.counts > first) & (log_t.detach().amax(1) >= LOG_TRANSMITTANCE_MIN)).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        slot = bins.starts.index_select(0, active)[:, None] + (first + depth_slot)
        slot = torch.where(first + depth_slot < bins.counts.index_select(0, active)[:, None], slot, padding_slot)
        rows = packed.index_select(0, gaussian.index_select(0, slot.flatten())).view(*slot.shape, -1)
        args = (rows, origin_x.index_select(0, active)[:, None], origin_y.index_select(0, active)[:, None],
                log_t.index_select(0, active), tile_size)
        if use_checkpoint:
            tile_features, tile_log_t, kept_log_t = checkpoint(composite_block, *args, use_reentrant=False)
        else:
            tile_features, tile_log_t, kept_log_t = composite_block(*args)
        log_t = log_t.index_copy(0, active, tile_log_t)
        active_tiles.append(active)
        block_features.append(tile_features)
        block_kept.append(kept_log_t)

    accumulated = packed.new_zeros(num_tiles, pixels_per_tile, channels)
    kept_log_t = packed.new_zeros(num_tiles, pixels_per_tile)
    if active_tiles:
        active = torch.cat(active_tiles)
        accumulated = accumulated.index_add(0, active, torch.cat(block_features))
        kept_log_t = kept_log_t.index_add(0, active, torch.cat(block_kept))

    def to_image(per_tile: Tensor) -> Tensor:  # [T, P, ...] -> [I, H, W, ...]
        grid = per_tile.view(num_images, bins.tiles_y, bins.tiles_x, tile_size, tile_size, *per_tile.shape[2:])
        grid = grid.transpose(2, 3).reshape(num_images, bins.tiles_y * tile_size, bins.tiles_x * tile_size,
                                            *per_tile.shape[2:])
        return grid[:, :height, :width]

    transmittance = to_image(torch.exp(kept_log_t))
    background = background.to(features.dtype).expand(num_images, channels)
    image = to_image(accumulated) + transmittance[..., None] * background[:, None, None]
    return image, 1 - transmittance
