"""CPU versions of the compiled kernels gsplat 1.5.3 calls for 3DGS pinhole rendering.

`gsplat.rendering.rasterization()` reaches its CUDA code only through `gsplat.cuda._backend._C`
(`_make_lazy_cuda_func` imports `_C` at call time). `cpu_backend_module()` returns a module with a
`_C` holding the functions below; putting it at `sys.modules["gsplat.cuda._backend"]` runs gsplat's
own Python (shape checks, covariance triangle, packing, channel padding, its autograd Functions,
RGB+D handling) unchanged on CPU, and never triggers gsplat's JIT build.

Each function reproduces the kernel of the same name in gsplat/cuda/csrc (read from the installed
1.5.3 sources): its inputs, output shapes and dtypes, culling rules and compositing order.
- projection_ewa_3dgs_fused_fwd / packed_fwd (ProjectionEWA3DGSFused.cu, ...Packed.cu,
  include/Utils.cuh persp_proj, add_blur): world->camera, cull z < near or z > far, EWA Jacobian at
  the position clamped to 1.3x the frustum, +eps2d on the 2D diagonal, cull det <= 0, conic = the
  2D inverse's upper triangle, radius = ceil(min(3.33, sqrt(2 ln(255 opacity))) sqrt(var)), cull
  opacity < 1/255 and footprints outside the image. The packed kernel of 1.5.3 reads the opacity of
  Gaussian `gid` without the batch offset (`opacities[col_idx]`); reproduced as is.
- intersect_tile / intersect_offset (IntersectTile.cu, Intersect.cpp): tile box
  [floor((m - r) / 16), ceil((m + r) / 16)) clamped to the grid, ids image | tile | depth bits,
  sorted (stable, like cub's radix sort); offsets = first intersection of each (image, tile).
- rasterize_to_pixels_3dgs_fwd (RasterizeToPixels3DGSFwd.cu): per pixel centre (j + .5, i + .5),
  the tile's Gaussians in order; sigma = .5 (a dx^2 + c dy^2) + b dx dy, alpha = min(.999,
  o exp(-sigma)), skipped if sigma < 0 or alpha < 1/255; stops (exclusive) at the Gaussian that
  takes T to <= 1e-4; last_ids = index of the last intersection used.
The backward kernels are the vector-Jacobian products of these forwards: each *_bwd recomputes
its forward in differentiable torch on the saved inputs (the rasterizer keeps exactly the pairs
up to last_ids, as the CUDA backward does; the projection only Gaussians with radii > 0) and
returns torch.autograd.grad of it in the kernel's output layout (e.g. v_covars as the 6 upper
entries, off-diagonals summed, as ProjectionEWA3DGSFused.cu writes them).
Only what 3DGS pinhole rendering needs: no quats/scales, compensations, masks or absgrad.
"""

import types

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_CAP = 0.999
TRANSMITTANCE_STOP = 1e-4
EXTEND_MAX = 3.33
PINHOLE = "CameraModelType.PINHOLE"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"gsplat CPU kernel: {message}")


def _check_inputs(**tensors: Tensor | None) -> None:
    """CHECK_INPUT without the CUDA part: contiguous (gsplat's Python makes them so)."""
    for name, tensor in tensors.items():
        if tensor is not None:
            _check(tensor.is_contiguous(), f"{name} must be contiguous")


def _unsupported(**arguments: object) -> None:
    for name, value in arguments.items():
        _check(value is None or value is False, f"{name} is not implemented by the CPU kernels")


def _covariance(covars: Tensor) -> Tensor:
    """Upper triangle [..., 6] (xx, xy, xz, yy, yz, zz) -> symmetric [..., 3, 3] (as the kernel's mat3)."""
    c0, c1, c2, c3, c4, c5 = covars.unbind(-1)
    return torch.stack([c0, c1, c2, c1, c3, c4, c2, c4, c5], dim=-1).unflatten(-1, (3, 3))


def _project(means: Tensor, covars: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
             eps2d: float, in_front: Tensor | None = None) -> dict[str, Tensor]:
    """means [..., N, 3], covars [..., N, 6], viewmats [..., C, 4, 4], Ks [..., C, 3, 3] -> per
    [..., C, N]: depth z, mean2d, conic (3), blurred cov2d diagonal, det. Differentiable.
    in_front (bool [..., C, N]) replaces z by 1 elsewhere, so culled entries stay finite."""
    rotation, translation = viewmats[..., :3, :3], viewmats[..., :3, 3]
    means_c = torch.einsum("...cij,...nj->...cni", rotation, means) + translation[..., None, :]
    x, y, z = means_c.unbind(-1)
    if in_front is not None:
        z = torch.where(in_front, z, torch.ones_like(z))
    rotation_n = rotation[..., None, :, :]  # [..., C, 1, 3, 3] against covariances [..., 1, N, 3, 3]
    covar_c = rotation_n @ _covariance(covars)[..., None, :, :, :] @ rotation_n.transpose(-1, -2)
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zero = torch.zeros_like(z)
    jacobian = torch.stack([fx * rz, zero, -fx * tx * rz * rz,
                            zero, fy * rz, -fy * ty * rz * rz], dim=-1).unflatten(-1, (2, 3))
    cov2d = jacobian @ covar_c @ jacobian.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    c = cov2d[..., 1, 1] + eps2d
    b = cov2d[..., 1, 0]
    det = a * c - b * cov2d[..., 0, 1]
    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    return {"z": z, "mean2d": mean2d, "a": a, "c": c, "det": det,
            "conic": torch.stack([c / det, -b / det, a / det], dim=-1)}


@torch.no_grad()
def _radii(projected: dict[str, Tensor], z: Tensor, opacities: Tensor | None, width: int, height: int,
           near_plane: float, far_plane: float, radius_clip: float) -> tuple[Tensor, Tensor]:
    """-> radii int32 [..., C, N, 2] (0 where culled) and the valid mask, as the fused kernel decides."""
    valid = (z >= near_plane) & (z <= far_plane) & (projected["det"] > 0)
    extend = torch.full_like(z, EXTEND_MAX)
    if opacities is not None:
        valid &= opacities >= ALPHA_THRESHOLD
        level = torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)
        extend = torch.minimum(extend, torch.sqrt(2 * level))
    radius_x = torch.ceil(extend * torch.sqrt(projected["a"].clamp_min(0)))
    radius_y = torch.ceil(extend * torch.sqrt(projected["c"].clamp_min(0)))
    valid &= ~((radius_x <= radius_clip) & (radius_y <= radius_clip))
    u, v = projected["mean2d"].unbind(-1)
    valid &= ~((u + radius_x <= 0) | (u - radius_x >= width) | (v + radius_y <= 0) | (v - radius_y >= height))
    radii = torch.stack([radius_x, radius_y], dim=-1).nan_to_num(0)
    radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return radii, valid


def _in_front(means: Tensor, viewmats: Tensor) -> Tensor:
    z = torch.einsum("...cj,...nj->...cn", viewmats[..., 2, :3], means) + viewmats[..., 2, 3, None]
    return z, z > 0


def _fused_forward(means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                   radius_clip, per_scene_opacity: bool):
    batch_dims, n, c = means.shape[:-2], means.shape[-2], viewmats.shape[-3]
    z, in_front = _in_front(means, viewmats)
    projected = _project(means, covars, viewmats, Ks, width, height, eps2d, in_front)
    if opacities is not None:
        if per_scene_opacity:  # fused kernel: opacities[bid * N + gid]
            opacities = opacities[..., None, :].expand(*batch_dims, c, n)
        else:  # packed kernel of 1.5.3: opacities[col_idx], the first scene's row for every scene
            opacities = opacities.reshape(-1, n)[0].expand(*batch_dims, c, n)
    radii, valid = _radii(projected, z, opacities, width, height, near_plane, far_plane, radius_clip)
    return projected, radii, valid, z


def projection_ewa_3dgs_fused_fwd(means, covars, quats, scales, opacities, viewmats, Ks, width, height, eps2d,
                                  near_plane, far_plane, radius_clip, calc_compensations, camera_model):
    """-> radii int32 [..., C, N, 2], means2d [..., C, N, 2], depths [..., C, N], conics [..., C, N, 3], None.
    Culled entries are NaN (the kernel leaves them uninitialised): nothing downstream may read them."""
    _check(camera_model == PINHOLE, f"camera model {camera_model} not implemented")
    _unsupported(quats=quats, scales=scales, calc_compensations=calc_compensations)
    _check_inputs(means=means, covars=covars, opacities=opacities, viewmats=viewmats, Ks=Ks)
    with torch.no_grad():
        projected, radii, valid, z = _fused_forward(means, covars, opacities, viewmats, Ks, width, height, eps2d,
                                                    near_plane, far_plane, radius_clip, per_scene_opacity=True)
        nan = torch.tensor(float("nan"), dtype=means.dtype)
        means2d = torch.where(valid[..., None], projected["mean2d"], nan)
        depths = torch.where(valid, z, nan)
        conics = torch.where(valid[..., None], projected["conic"], nan)
    return radii, means2d.contiguous(), depths.contiguous(), conics.contiguous(), None


def _projection_vjp(means, covars, viewmats, Ks, width, height, eps2d, select, outputs_grad, viewmats_requires_grad):
    """Recompute the projection with autograd; select(dict of [..., C, N, k]) -> the rows the kernel wrote."""
    inputs = [t.detach().requires_grad_(True) for t in (means, covars, viewmats)]
    with torch.enable_grad():
        _, in_front = _in_front(inputs[0], inputs[2])
        projected = _project(inputs[0], inputs[1], inputs[2], Ks, width, height, eps2d, in_front)
        outputs = select([projected["mean2d"], projected["z"], projected["conic"]])
        grads = torch.autograd.grad(outputs, inputs, outputs_grad, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
    v_means, v_covars, v_viewmats = grads
    return v_means, v_covars, None, None, v_viewmats if viewmats_requires_grad else None


def projection_ewa_3dgs_fused_bwd(means, covars, quats, scales, viewmats, Ks, width, height, eps2d, camera_model,
                                  radii, conics, compensations, v_means2d, v_depths, v_conics, v_compensations,
                                  viewmats_requires_grad):
    """-> v_means [..., N, 3], v_covars [..., N, 6], None, None, v_viewmats or None: only entries with radii > 0."""
    _check(camera_model == PINHOLE, f"camera model {camera_model} not implemented")
    _unsupported(quats=quats, scales=scales, compensations=compensations, v_compensations=v_compensations)
    valid = (radii > 0).all(-1)
    keep = lambda outputs: [torch.where(valid.reshape(valid.shape + (1,) * (o.ndim - valid.ndim)), o,
                                        torch.zeros_like(o)) for o in outputs]  # noqa: E731
    return _projection_vjp(means, covars, viewmats, Ks, width, height, eps2d, keep, (v_means2d, v_depths, v_conics),
                           viewmats_requires_grad)


def projection_ewa_3dgs_packed_fwd(means, covars, quats, scales, opacities, viewmats, Ks, width, height, eps2d,
                                   near_plane, far_plane, radius_clip, calc_compensations, camera_model):
    """-> indptr [B*C + 1], batch_ids, camera_ids, gaussian_ids (int64 [nnz], row-major (b, c, g) order),
    radii [nnz, 2], means2d [nnz, 2], depths [nnz], conics [nnz, 3], None."""
    _check(camera_model == PINHOLE, f"camera model {camera_model} not implemented")
    _unsupported(quats=quats, scales=scales, calc_compensations=calc_compensations)
    _check_inputs(means=means, covars=covars, opacities=opacities, viewmats=viewmats, Ks=Ks)
    with torch.no_grad():
        projected, radii, valid, z = _fused_forward(means, covars, opacities, viewmats, Ks, width, height, eps2d,
                                                    near_plane, far_plane, radius_clip, per_scene_opacity=False)
        n, c = means.shape[-2], viewmats.shape[-3]
        flat_valid = valid.reshape(-1, c, n)
        batch_ids, camera_ids, gaussian_ids = flat_valid.nonzero(as_tuple=True)
        counts = flat_valid.reshape(-1, n).sum(-1)
        indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
        pick = lambda t: t.reshape(-1, c, n, *t.shape[valid.ndim:])[batch_ids, camera_ids, gaussian_ids]  # noqa: E731
        return (indptr, batch_ids, camera_ids, gaussian_ids, pick(radii).contiguous(),
                pick(projected["mean2d"]).contiguous(), pick(z).contiguous(), pick(projected["conic"]).contiguous(),
                None)


def projection_ewa_3dgs_packed_bwd(means, covars, quats, scales, viewmats, Ks, width, height, eps2d, camera_model,
                                   batch_ids, camera_ids, gaussian_ids, conics, compensations, v_means2d, v_depths,
                                   v_conics, v_compensations, viewmats_requires_grad, sparse_grad):
    _check(camera_model == PINHOLE, f"camera model {camera_model} not implemented")
    _unsupported(quats=quats, scales=scales, compensations=compensations, v_compensations=v_compensations,
                 sparse_grad=sparse_grad)
    n, c = means.shape[-2], viewmats.shape[-3]
    pick = lambda outputs: [o.reshape(-1, c, n, *o.shape[viewmats.ndim - 1:])[batch_ids, camera_ids, gaussian_ids]
                            for o in outputs]  # noqa: E731
    return _projection_vjp(means, covars, viewmats, Ks, width, height, eps2d, pick, (v_means2d, v_depths, v_conics),
                           viewmats_requires_grad)


def _bits(count: int) -> int:
    return count.bit_length()  # == floor(log2(count)) + 1 for count >= 1


@torch.no_grad()
def intersect_tile(means2d, radii, depths, image_ids, gaussian_ids, I, tile_size, tile_width, tile_height, sort,
                   segmented):
    """-> tiles_per_gauss int32 (shape of depths), isect_ids int64 [M] (image | tile | depth bits),
    flatten_ids int32 [M]."""
    _check_inputs(means2d=means2d, radii=radii, depths=depths)
    _check(depths.dtype == torch.float32, "depth bits are read as float32")
    packed = means2d.dim() == 2
    tile_bits = _bits(tile_width * tile_height)
    _check(_bits(I) + tile_bits <= 32, "too many images x tiles for 64-bit ids")
    mean = means2d.reshape(-1, 2)
    radius = radii.reshape(-1, 2).to(means2d.dtype)
    usable = (radius > 0).all(-1)
    # (uint32_t)floor(negative) saturates to 0 on the GPU, then min(..., tile_width).
    low = torch.floor(mean / tile_size - radius / tile_size).nan_to_num(0)
    high = torch.ceil(mean / tile_size + radius / tile_size).nan_to_num(0)
    limits = torch.tensor([tile_width, tile_height], dtype=mean.dtype)
    low = torch.minimum(low.clamp_min(0), limits).long()
    high = torch.minimum(high.clamp_min(0), limits).long()
    count_x, count_y = (high - low).unbind(-1)
    tiles = torch.where(usable, count_x * count_y, torch.zeros_like(count_x))
    tiles_per_gauss = tiles.to(torch.int32).reshape(depths.shape)

    owner = torch.repeat_interleave(torch.arange(tiles.shape[0]), tiles)
    position = torch.arange(owner.shape[0]) - (torch.cumsum(tiles, 0) - tiles)[owner]
    tile_x = low[owner, 0] + position % count_x[owner]
    tile_y = low[owner, 1] + position // count_x[owner]
    image = image_ids.long()[owner] if packed else owner // means2d.shape[-2]
    depth_bits = depths.reshape(-1).view(torch.int32).long()[owner] & 0xFFFFFFFF
    isect_ids = (image << (32 + tile_bits)) | ((tile_y * tile_width + tile_x) << 32) | depth_bits
    flatten_ids = owner.to(torch.int32)
    if sort:
        isect_ids, order = torch.sort(isect_ids, stable=True)
        flatten_ids = flatten_ids[order]
    return tiles_per_gauss, isect_ids, flatten_ids


@torch.no_grad()
def intersect_offset(isect_ids, I, tile_width, tile_height):
    """-> offsets int32 [I, tile_height, tile_width]: index of each (image, tile)'s first intersection
    (the next one's start where a tile has none, n_isects after the last)."""
    _check_inputs(isect_ids=isect_ids)
    n_tiles = tile_width * tile_height
    tile_bits = _bits(n_tiles)
    key = isect_ids >> 32
    flat_tile = (key >> tile_bits) * n_tiles + (key & ((1 << tile_bits) - 1))
    offsets = torch.searchsorted(flat_tile, torch.arange(I * n_tiles), right=False)
    return offsets.to(torch.int32).reshape(I, tile_height, tile_width)


def _pairs(means2d, conics, opacities, width, height, tile_size, isect_offsets, flatten_ids):
    """Every (intersection, pixel of its tile) pair with a valid alpha, grouped by pixel in intersection
    order. -> isect index, flat pixel index (image * H * W + i * W + j), Gaussian flat index, pixel centres."""
    tile_height, tile_width = isect_offsets.shape[-2:]
    n_tiles = tile_height * tile_width
    n_isects = flatten_ids.shape[0]
    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], torch.tensor([n_isects])])
    flat_tile = torch.repeat_interleave(torch.arange(starts.shape[0]), ends - starts)
    image, tile = flat_tile // n_tiles, flat_tile % n_tiles
    local = torch.arange(tile_size * tile_size)
    row = (tile // tile_width * tile_size)[:, None] + local // tile_size  # [M, ts^2]
    col = (tile % tile_width * tile_size)[:, None] + local % tile_size
    gaussian = flatten_ids.long()[:, None].expand_as(row)
    px, py = col.to(means2d.dtype) + 0.5, row.to(means2d.dtype) + 0.5
    mean = means2d.reshape(-1, 2)[flatten_ids.long()]
    conic = conics.reshape(-1, 3)[flatten_ids.long()]
    opacity = opacities.reshape(-1)[flatten_ids.long()]
    dx, dy = mean[:, 0, None] - px, mean[:, 1, None] - py
    sigma = 0.5 * (conic[:, 0, None] * dx * dx + conic[:, 2, None] * dy * dy) + conic[:, 1, None] * dx * dy
    alpha = torch.clamp_max(opacity[:, None] * torch.exp(-sigma), ALPHA_CAP)
    keep = (row < height) & (col < width) & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    isect, slot = keep.nonzero(as_tuple=True)  # isect-major: within a pixel, intersection order
    pixel = (image[isect] * height + row[isect, slot]) * width + col[isect, slot]
    pixel, order = torch.sort(pixel, stable=True)
    isect, slot = isect[order], slot[order]
    return isect, pixel, gaussian[isect, slot], px[isect, slot], py[isect, slot]


def _composite(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets, flatten_ids,
               last_ids=None):
    """Front-to-back compositing of the valid pairs; differentiable in means2d, conics, colors, opacities.
    last_ids None: stop as the forward kernel does; given: keep the pairs up to it (the backward kernel)."""
    num_images = isect_offsets.numel() // (isect_offsets.shape[-1] * isect_offsets.shape[-2])
    num_pixels = num_images * height * width
    channels = colors.shape[-1]
    isect, pixel, gaussian, px, py = _pairs(means2d.detach(), conics.detach(), opacities.detach(), width, height,
                                            tile_size, isect_offsets, flatten_ids)
    mean = means2d.reshape(-1, 2)[gaussian]
    conic = conics.reshape(-1, 3)[gaussian]
    dx, dy = mean[:, 0] - px, mean[:, 1] - py
    sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
    alpha = torch.clamp_max(opacities.reshape(-1)[gaussian] * torch.exp(-sigma), ALPHA_CAP)

    # Pairs -> a padded [pixels with pairs, longest list] table, so transmittance is a plain cumprod.
    used_pixels, slot_counts = torch.unique_consecutive(pixel, return_counts=True)
    row = torch.repeat_interleave(torch.arange(used_pixels.shape[0]), slot_counts)
    slot = torch.arange(pixel.shape[0]) - (torch.cumsum(slot_counts, 0) - slot_counts)[row]
    longest = int(slot_counts.max()) if slot_counts.numel() else 0
    if last_ids is None:
        with torch.no_grad():
            keep_table = torch.ones(used_pixels.shape[0], longest, dtype=alpha.dtype)
            keep_table[row, slot] = 1 - alpha.detach()
            t_after = torch.cumprod(keep_table, dim=1)[row, slot]
            included = t_after > TRANSMITTANCE_STOP  # T falls monotonically: the first failure stops the pixel
    else:
        included = isect <= last_ids.reshape(-1).long()[pixel]
    alpha = torch.where(included, alpha, torch.zeros_like(alpha))
    one_minus = torch.ones(used_pixels.shape[0], longest, dtype=alpha.dtype).index_put((row, slot), 1 - alpha)
    t_inclusive = torch.cumprod(one_minus, dim=1)
    t_before = torch.cat([torch.ones_like(t_inclusive[:, :1]), t_inclusive[:, :-1]], dim=1)[row, slot]
    weighted = (alpha * t_before)[:, None] * colors.reshape(-1, channels)[gaussian]
    accumulated = colors.new_zeros(num_pixels, channels).index_add(0, pixel, weighted)
    transmittance = colors.new_ones(num_pixels).index_put((used_pixels,), t_inclusive[:, -1] if longest else
                                                          colors.new_ones(0))
    if backgrounds is not None:
        background = backgrounds.reshape(num_images, 1, channels).expand(num_images, height * width, channels)
        accumulated = accumulated + transmittance[:, None] * background.reshape(num_pixels, channels)
    image_dims = isect_offsets.shape[:-2]
    renders = accumulated.reshape(*image_dims, height, width, channels)
    alphas = (1 - transmittance).reshape(*image_dims, height, width, 1)

    with torch.no_grad():
        last = torch.zeros(num_pixels, dtype=torch.long)
        last.scatter_reduce_(0, pixel[included], isect[included], "amax")
    return renders, alphas, last.to(torch.int32).reshape(*image_dims, height, width)


def _check_rasterize_inputs(means2d, conics, colors, opacities, backgrounds, masks, isect_offsets, flatten_ids):
    _unsupported(masks=masks)
    _check_inputs(means2d=means2d, conics=conics, colors=colors, opacities=opacities, backgrounds=backgrounds,
                  isect_offsets=isect_offsets, flatten_ids=flatten_ids)
    for name, tensor in (("means2d", means2d), ("conics", conics), ("colors", colors), ("opacities", opacities),
                         ("backgrounds", backgrounds)):
        # The kernel is instantiated for float only (data_ptr<float>()).
        if tensor is not None:
            _check(tensor.dtype == torch.float32, f"{name} must be float32, got {tensor.dtype}")
    num_images = isect_offsets.numel() // (isect_offsets.shape[-1] * isect_offsets.shape[-2])
    # The kernel reads backgrounds[image_id * CDIM + k]: anything smaller is read out of bounds on the GPU.
    _check(backgrounds is None or backgrounds.numel() == num_images * colors.shape[-1],
           f"backgrounds {tuple(backgrounds.shape) if backgrounds is not None else None}: the kernel reads one "
           f"per image, {num_images} x {colors.shape[-1]}")
    _check(colors.shape[-1] in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513),
           f"no kernel instantiated for {colors.shape[-1]} channels")


def rasterize_to_pixels_3dgs_fwd(means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size,
                                 isect_offsets, flatten_ids):
    """-> renders [..., H, W, D], alphas [..., H, W, 1], last_ids int32 [..., H, W]."""
    _check_rasterize_inputs(means2d, conics, colors, opacities, backgrounds, masks, isect_offsets, flatten_ids)
    with torch.no_grad():
        return _composite(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                          flatten_ids)


def rasterize_to_pixels_3dgs_bwd(means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size,
                                 isect_offsets, flatten_ids, render_alphas, last_ids, v_render_colors, v_render_alphas,
                                 absgrad):
    """-> v_means2d_abs (None), v_means2d, v_conics, v_colors, v_opacities."""
    _check_rasterize_inputs(means2d, conics, colors, opacities, backgrounds, masks, isect_offsets, flatten_ids)
    _unsupported(absgrad=absgrad)
    inputs = [t.detach().requires_grad_(True) for t in (means2d, conics, colors, opacities)]
    with torch.enable_grad():
        renders, alphas, _ = _composite(*inputs, backgrounds, width, height, tile_size, isect_offsets, flatten_ids,
                                        last_ids=last_ids)
        grads = torch.autograd.grad((renders, alphas), inputs, (v_render_colors, v_render_alphas), allow_unused=True)
    v_means2d, v_conics, v_colors, v_opacities = (torch.zeros_like(t) if g is None else g
                                                  for t, g in zip(inputs, grads))
    return None, v_means2d, v_conics, v_colors, v_opacities


PORTED_VERSION = "1.5.3"  # the gsplat whose `_C` interface (names, argument order, outputs) the kernels above follow


def check_gsplat_version() -> None:
    """`_C` is gsplat's private interface and may change in any release: refuse another version rather than
    feed it kernels that no longer match its Python."""
    import gsplat

    if gsplat.__version__ != PORTED_VERSION:
        raise RuntimeError(f"tests/gsplat_cpu_kernels.py ports gsplat {PORTED_VERSION}'s compiled kernels, but gsplat "
                           f"{gsplat.__version__} is installed: compare the kernels' signatures with its "
                           "gsplat/cuda/_wrapper.py and csrc, update them, then PORTED_VERSION")


def cpu_backend_module() -> types.ModuleType:
    """A stand-in for the module `gsplat.cuda._backend`: its `_C` holds the CPU kernels above.
    `_make_lazy_cuda_obj("CameraModelType.PINHOLE")` ends at getattr(_C, "PINHOLE"), hence both names."""
    check_gsplat_version()
    kernels = types.SimpleNamespace(
        projection_ewa_3dgs_fused_fwd=projection_ewa_3dgs_fused_fwd,
        projection_ewa_3dgs_fused_bwd=projection_ewa_3dgs_fused_bwd,
        projection_ewa_3dgs_packed_fwd=projection_ewa_3dgs_packed_fwd,
        projection_ewa_3dgs_packed_bwd=projection_ewa_3dgs_packed_bwd,
        intersect_tile=intersect_tile,
        intersect_offset=intersect_offset,
        rasterize_to_pixels_3dgs_fwd=rasterize_to_pixels_3dgs_fwd,
        rasterize_to_pixels_3dgs_bwd=rasterize_to_pixels_3dgs_bwd,
        CameraModelType=types.SimpleNamespace(PINHOLE=PINHOLE),
        PINHOLE=PINHOLE,
    )
    module = types.ModuleType("gsplat.cuda._backend")
    module._C = kernels
    return module
