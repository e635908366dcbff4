"""A tiled Gaussian rasterizer in plain PyTorch: the CPU backend, differentiable with autograd.

Same rules as the CUDA rasterizers (spec §7.2): per pixel, the Gaussians whose alpha =
min(0.99, opacity exp(-power)) reaches 1/255, composited front to back in camera-z order, stopping
before the Gaussian that would take transmittance below 1e-4. Unlike the original (a 3-sigma
circle), a Gaussian's footprint is the exact box of its alpha >= 1/255 ellipse (as gsplat's), so
the image does not depend on the tiling and equals a dense per-pixel evaluation.

How it stays fast and bounded:
1. bin: every visible Gaussian's footprint box is cut into 16x16 tiles; the (image, tile,
   Gaussian) intersections are sorted by tile, then depth.
2. chunk: consecutive whole tiles are grouped so each chunk enumerates at most `chunk_pairs`
   (pixel, Gaussian) candidates — per footprint row only the columns inside its alpha >= 1/255
   ellipse and inside the tile, never tile x all Gaussians.
3. select (no grad): evaluate alpha for the candidates, keep alpha >= 1/255, sort by pixel (stable:
   depth order survives), apply the early stop on the running transmittance.
4. composite (autograd): recompute alpha for the survivors only, transmittance by a segmented
   cumulative sum of log(1 - alpha), scatter-add the weighted features into the image.
   With several chunks each chunk is checkpointed, so backward memory is one chunk's, not the image's.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN

TILE_SIZE = 16
CHUNK_PAIRS = 1 << 22


@dataclass
class Intersections:
    """(image, tile, Gaussian) intersections sorted by tile then depth, with each one's pixel box."""

    gaussian: Tensor  # [M] flat index image * N + gaussian
    x_lo: Tensor  # [M] inclusive pixel box of the footprint inside the tile
    x_hi: Tensor
    y_lo: Tensor
    y_hi: Tensor
    chunk_sizes: list[int]  # consecutive intersection counts, whole tiles per chunk


@dataclass
class Contributions:
    """Surviving (pixel, Gaussian) pairs, grouped by pixel, front to back within a pixel."""

    gaussian: Tensor  # [P] flat Gaussian index
    pixel: Tensor  # [P] flat pixel index image * H * W + y * W + x
    center_x: Tensor  # [P] pixel centre coordinates
    center_y: Tensor
    segment_start: Tensor  # [P] index of the first pair of the same pixel
    alpha: Tensor  # [P] as computed while selecting (reused when no gradient is needed)


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


def ragged_arange(counts: Tensor) -> tuple[Tensor, Tensor]:
    """counts [K] -> (owner [sum], position within owner [sum]) for a ragged enumeration."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(owner.shape[0], device=counts.device) - starts[owner]
    return owner, position


def first_of_run(keys: Tensor) -> Tensor:
    """keys [K] sorted -> for each entry the index of the first entry with the same key."""
    index = torch.arange(keys.shape[0], device=keys.device)
    is_first = torch.ones_like(keys, dtype=torch.bool)
    is_first[1:] = keys[1:] != keys[:-1]
    return torch.where(is_first, index, torch.zeros_like(index)).cummax(0).values


@torch.no_grad()
def bin_to_tiles(means2d: Tensor, cov2d_diag: Tensor, opacities: Tensor, depths: Tensor, visible: Tensor,
                 image_shape: tuple[int, int], tile_size: int, chunk_pairs: int) -> Intersections:
    """[I, N] Gaussians -> intersections with tiles, sorted by (image, tile, depth)."""
    height, width = image_shape
    num_images, num_gaussians = depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    usable = visible & (opacities >= ALPHA_MIN)
    x_lo, x_hi, y_lo, y_hi, hit = footprint_boxes(means2d, cov2d_diag, opacities, usable, image_shape)

    # Visible Gaussians in (image, depth) order; a stable sort by tile then keeps depth order per tile.
    order = torch.argsort(torch.where(hit, depths, torch.full_like(depths, math.inf)), dim=1, stable=True)
    image, rank = hit.gather(1, order).nonzero(as_tuple=True)
    gaussian = image * num_gaussians + order[image, rank]
    x_lo, x_hi, y_lo, y_hi = (t.flatten()[gaussian] for t in (x_lo, x_hi, y_lo, y_hi))
    tx_lo, ty_lo = x_lo // tile_size, y_lo // tile_size
    tiles_w = x_hi // tile_size - tx_lo + 1
    tiles_h = y_hi // tile_size - ty_lo + 1
    owner, position = ragged_arange(tiles_w * tiles_h)
    tile_x = tx_lo[owner] + position % tiles_w[owner]
    tile_y = ty_lo[owner] + position // tiles_w[owner]
    tile = (image[owner] * tiles_y + tile_y) * tiles_x + tile_x
    tile, sort = torch.sort(tile, stable=True)
    owner, tile_x, tile_y = owner[sort], tile_x[sort], tile_y[sort]

    box_x_lo = torch.maximum(x_lo[owner], tile_x * tile_size)
    box_x_hi = torch.minimum(x_hi[owner], tile_x * tile_size + tile_size - 1)
    box_y_lo = torch.maximum(y_lo[owner], tile_y * tile_size)
    box_y_hi = torch.minimum(y_hi[owner], tile_y * tile_size + tile_size - 1)
    pairs = (box_x_hi - box_x_lo + 1) * (box_y_hi - box_y_lo + 1)

    # Whole tiles per chunk: a tile goes to the chunk its first candidate pair falls in.
    pairs_before = torch.cumsum(pairs, 0) - pairs
    chunk = pairs_before[first_of_run(tile)] // chunk_pairs
    chunk_sizes = torch.unique_consecutive(chunk, return_counts=True)[1].tolist()
    return Intersections(gaussian[owner], box_x_lo, box_x_hi, box_y_lo, box_y_hi, chunk_sizes)


def segmented_log_transmittance(log_keep: Tensor, segment_start: Tensor) -> Tensor:
    """Exclusive per-segment cumulative sum [P] of log(1 - alpha): log T in front of each pair.
    The running sum is float64 so that subtracting segment offsets stays exact over long chunks."""
    total = torch.cumsum(log_keep.double(), 0)
    exclusive = total - log_keep.double()
    return (exclusive - exclusive[segment_start]).to(log_keep.dtype)


@torch.no_grad()
def select_contributions(packed: Tensor, bins: Intersections, start: int, stop: int,
                         image_shape: tuple[int, int], num_gaussians: int) -> Contributions:
    """Candidate pairs of intersections [start, stop) -> the pairs that actually contribute.
    packed [I*N, 6 + D] = (u, v, conic a, b, c, opacity, features) per Gaussian, detached."""
    height, width = image_shape
    gaussian = bins.gaussian[start:stop]
    x_lo, y_lo, x_hi = bins.x_lo[start:stop], bins.y_lo[start:stop], bins.x_hi[start:stop]
    params = packed[:, :6].index_select(0, gaussian)
    # power = A dx^2 + B dx dy + C dy^2 with dx = u - pixel centre x, dy = v - pixel centre y;
    # alpha >= 1/255 <=> power <= level = log(255 opacity) (the 0.99 cap cannot push it under).
    u, v, a_half, b, c_half = params[:, 0], params[:, 1], 0.5 * params[:, 2], params[:, 3], 0.5 * params[:, 4]
    level = torch.log(params[:, 5] * 255)
    index_dtype = torch.int32 if packed.shape[0] * max(height * width, 1) < 2**31 else torch.int64

    # Rows of each box: the exact column interval of the ellipse power <= level (plus a rounding
    # margin; the per-pair test below decides), so only pixels inside the footprint are enumerated.
    box_h = bins.y_hi[start:stop] - y_lo + 1
    row_owner = torch.repeat_interleave(torch.arange(box_h.shape[0], device=box_h.device), box_h)
    row_y = y_lo[row_owner] + torch.arange(row_owner.shape[0], device=box_h.device) - (torch.cumsum(box_h, 0) - box_h)[row_owner]
    row_params = torch.stack([u, v, a_half, b, c_half, level], dim=-1).index_select(0, row_owner)
    ru, rv, ra, rb, rc, rlevel = row_params.unbind(-1)
    dy = rv - (row_y.to(packed.dtype) + 0.5)
    c_term = rc * dy * dy
    half_width = torch.sqrt(((rb * dy) ** 2 - 4 * ra * (c_term - rlevel)).clamp_min(0)) / (2 * ra)
    centre = ru + rb * dy / (2 * ra)  # the x where power is smallest on this row
    x_from = torch.ceil(centre - half_width - 0.5 - 1e-3).clamp_min(x_lo[row_owner].to(packed.dtype)).long()
    x_to = torch.floor(centre + half_width - 0.5 + 1e-3).clamp_max(x_hi[row_owner].to(packed.dtype)).long()
    row_counts = (x_to - x_from + 1).clamp_min(0)
    row_pixel = ((gaussian[row_owner] // num_gaussians) * height + row_y) * width + x_from
    per_row = torch.stack([ru - x_from.to(packed.dtype) - 0.5, dy, ra, rb, c_term, rlevel], dim=-1)
    per_row_int = torch.stack([row_pixel, gaussian[row_owner]], dim=-1).to(index_dtype)

    # Pixels of each row (repeat_interleave streams; no random gathers over pairs).
    pair_row = torch.repeat_interleave(per_row, row_counts, dim=0)
    pair_int = torch.repeat_interleave(per_row_int, row_counts, dim=0)
    starts = torch.repeat_interleave((torch.cumsum(row_counts, 0) - row_counts).to(index_dtype), row_counts)
    position = torch.arange(starts.shape[0], device=starts.device, dtype=index_dtype) - starts
    dx = pair_row[:, 0] - position.to(packed.dtype)
    power = pair_row[:, 2] * dx * dx + pair_row[:, 3] * dx * pair_row[:, 1] + pair_row[:, 4]
    margin = pair_row[:, 5] - power  # >= 0 is alpha >= 1/255; alpha = exp(margin) / 255 before the cap
    keep = ((margin >= 0) & (power >= 0)).nonzero().squeeze(1)
    pixel = (pair_int[:, 0] + position).index_select(0, keep)
    gaussian = pair_int[:, 1].index_select(0, keep)
    alpha = (torch.exp(margin.index_select(0, keep)) / 255).clamp_max(ALPHA_MAX)

    pixel, sort = torch.sort(pixel, stable=True)  # stable: depth order within each pixel survives
    gaussian, alpha = gaussian.index_select(0, sort), alpha.index_select(0, sort)
    # Early stop: drop every pair from the one that would take transmittance below 1e-4 onwards.
    log_keep = torch.log1p(-alpha)
    log_t_after = segmented_log_transmittance(log_keep, first_of_run(pixel)).double() + log_keep.double()
    keep = (log_t_after >= math.log(TRANSMITTANCE_MIN)).nonzero().squeeze(1)
    pixel, gaussian, alpha = (t.index_select(0, keep) for t in (pixel, gaussian, alpha))
    in_image = pixel % (height * width)
    center_x = (in_image % width).to(packed.dtype) + 0.5
    center_y = (in_image // width).to(packed.dtype) + 0.5
    # int64 from here: the autograd gathers/scatters below are faster with it.
    return Contributions(gaussian.long(), pixel.long(), center_x, center_y, first_of_run(pixel.long()), alpha)


def composite(packed: Tensor, gaussian: Tensor, pixel: Tensor, center_x: Tensor, center_y: Tensor,
              segment_start: Tensor, num_pixels: int, alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of the selected pairs; packed [I*N, 6 + D] as above. Differentiable
    when alpha is None (recomputed from packed); a given alpha [P] skips that (no-grad renders).
    Returns accumulated features [num_pixels, D] and log transmittance [num_pixels]."""
    if alpha is None:
        pair = packed.index_select(0, gaussian)
        dx = pair[:, 0] - center_x
        dy = pair[:, 1] - center_y
        power = 0.5 * (pair[:, 2] * dx * dx + pair[:, 4] * dy * dy) + pair[:, 3] * dx * dy
        alpha = (pair[:, 5] * torch.exp(-power)).clamp_max(ALPHA_MAX)
        features = pair[:, 6:]
    else:
        features = packed[:, 6:].index_select(0, gaussian)
    log_keep = torch.log1p(-alpha)
    weight = alpha * torch.exp(segmented_log_transmittance(log_keep, segment_start))
    accumulated = packed.new_zeros(num_pixels, packed.shape[1] - 6).index_add(0, pixel, weight[:, None] * features)
    log_transmittance = log_keep.new_zeros(num_pixels).index_add(0, pixel, log_keep)
    return accumulated, log_transmittance


def rasterize_torch(means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, depths: Tensor,
                    visible: Tensor, cov2d_diag: Tensor, image_shape: tuple[int, int], background: Tensor,
                    tile_size: int = TILE_SIZE, chunk_pairs: int = CHUNK_PAIRS) -> tuple[Tensor, Tensor]:
    """Composite I images of N Gaussians.

    means2d [I, N, 2], conics [I, N, 3], opacities [I, N], features [I, N, D], depths [I, N] (sort key),
    visible [I, N], cov2d_diag [I, N, 2], background [D] or [I, D]
    -> features [I, H, W, D] (background blended by the final transmittance), alpha [I, H, W].
    """
    height, width = image_shape
    num_images, num_gaussians, channels = features.shape
    num_pixels = num_images * height * width
    bins = bin_to_tiles(means2d.detach(), cov2d_diag.detach(), opacities.detach(), depths.detach(), visible,
                        image_shape, tile_size, chunk_pairs)
    packed = torch.cat([means2d, conics, opacities[..., None], features], dim=-1).flatten(0, 1)
    packed_detached = packed.detach()
    needs_grad = torch.is_grad_enabled() and packed.requires_grad

    accumulated = features.new_zeros(num_pixels, channels)
    log_transmittance = features.new_zeros(num_pixels)
    start = 0
    for size in bins.chunk_sizes:
        pairs = select_contributions(packed_detached, bins, start, start + size, image_shape, num_gaussians)
        start += size
        args = (packed, pairs.gaussian, pairs.pixel, pairs.center_x, pairs.center_y, pairs.segment_start, num_pixels)
        if not needs_grad:
            chunk_features, chunk_log_t = composite(*args, alpha=pairs.alpha)
        elif len(bins.chunk_sizes) > 1:
            chunk_features, chunk_log_t = checkpoint(composite, *args, use_reentrant=False)
        else:
            chunk_features, chunk_log_t = composite(*args)
        accumulated = accumulated + chunk_features
        log_transmittance = log_transmittance + chunk_log_t

    transmittance = torch.exp(log_transmittance).view(num_images, height, width)
    background = background.to(features.dtype).expand(num_images, channels)
    image = accumulated.view(num_images, height, width, channels) + transmittance[..., None] * background[:, None, None]
    return image, 1 - transmittance
