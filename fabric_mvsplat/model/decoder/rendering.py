"""render(): Gaussians + cameras -> images (and depth), through gsplat on CUDA, our compiled CPU rasterizer,
or our pure-PyTorch rasterizer."""

from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor

from ...errors import ConfigError
from ...types import Gaussians
from .projection import pixel_intrinsics, project_gaussians
from .rasterize_cpu import rasterize_cpu
from .rasterize_torch import rasterize_torch
from .sh import sh_to_color

DepthMode = Literal["depth", "disparity", "relative_disparity", "log", "log_clamped", "expected_depth"]
DEPTH_MODES = ("depth", "disparity", "relative_disparity", "log", "log_clamped", "expected_depth")
BACKENDS = ("auto", "gsplat", "cpu", "torch")


@dataclass
class DecoderOutput:
    color: Tensor  # [B, V, 3, H, W]
    depth: Tensor | None  # [B, V, H, W]
    alpha: Tensor | None = None  # [B, V, H, W] accumulated opacity (1 - final transmittance)


def resolve_backend(backend: str, device: torch.device | str) -> Literal["torch", "gsplat", "cpu"]:
    """'auto' -> gsplat on CUDA, the compiled CPU rasterizer on CPU, torch elsewhere (MPS); 'gsplat' without CUDA
    and 'cpu' on another device are config errors. The one place of this rule: the start-up check
    (config.checks, with the run's device), the decoder and every render call use it."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ConfigError("model.decoder.backend", backend, "one of 'auto', 'gsplat', 'cpu', 'torch'")
    if backend == "auto":
        return {"cuda": "gsplat", "cpu": "cpu"}.get(device.type, "torch")  # type: ignore[return-value]
    if backend == "cpu" and device.type != "cpu":
        raise ConfigError("model.decoder.backend", backend,
                          f"'auto' or 'torch' here: the compiled rasterizer runs on CPU tensors and these are on "
                          f"'{device}'; set model.decoder.backend=auto")
    if backend == "gsplat" and device.type != "cuda":
        raise ConfigError("model.decoder.backend", backend,
                          f"'torch' or 'auto' here: gsplat renders only on CUDA and this runs on "
                          f"'{device}' (cuda available: {torch.cuda.is_available()}); "
                          "set model.decoder.backend=auto or model.decoder.backend=torch")
    return backend  # type: ignore[return-value]


def depth_feature(z: Tensor, near: Tensor, far: Tensor, mode: DepthMode) -> Tensor:
    """Camera z [B, V, G], near/far [B, V] -> the value each Gaussian splats (original units)."""
    near, far = near[..., None], far[..., None]
    if mode in ("depth", "expected_depth"):
        return z
    if mode == "disparity":
        return 1 / z
    if mode == "relative_disparity":
        eps = 1e-10
        disparity, near_disparity, far_disparity = 1 / (z + eps), 1 / (near + eps), 1 / (far + eps)
        return 1 - (disparity - far_disparity) / (near_disparity - far_disparity)
    if mode == "log":
        # The original's formula, kept as it computes: z.minimum(near).maximum(far).log(), which is log(far) for
        # every Gaussian (min(z, near) <= near < far); the rendered value is then alpha * log(far).
        return torch.maximum(torch.minimum(z, near), far).log()
    if mode == "log_clamped":  # what the original presumably meant: log of z clamped to [near, far]
        return torch.minimum(torch.maximum(z, near), far).log()
    raise ValueError(f"depth_mode={mode!r}: expected None or one of {DEPTH_MODES}")


def view_dependent_colors(gaussians: Gaussians, extrinsics: Tensor) -> Tensor:
    """SH colour of every Gaussian seen from every camera: [B, V, G, 3]."""
    centers = extrinsics[..., :3, 3]  # [B, V, 3]
    directions = gaussians.means[:, None] - centers[:, :, None]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return sh_to_color(gaussians.harmonics[:, None], directions)


def check_shapes(gaussians: Gaussians, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor) -> None:
    b, g = gaussians.means.shape[:2]
    v = extrinsics.shape[1] if extrinsics.ndim == 4 else -1
    expected = {
        "gaussians.means": (gaussians.means.shape, (b, g, 3)),
        "gaussians.covariances": (gaussians.covariances.shape, (b, g, 3, 3)),
        "gaussians.harmonics": (gaussians.harmonics.shape[:3], (b, g, 3)),
        "gaussians.opacities": (gaussians.opacities.shape, (b, g)),
        "extrinsics": (extrinsics.shape, (b, v, 4, 4)),
        "intrinsics": (intrinsics.shape, (b, v, 3, 3)),
        "near": (near.shape, (b, v)),
        "far": (far.shape, (b, v)),
    }
    for name, (shape, want) in expected.items():
        if tuple(shape) != want:
            raise ValueError(f"render(): {name} has shape {tuple(shape)}, expected {want} "
                             "(B scenes, G Gaussians, V cameras)")


class Cameras(NamedTuple):
    """V cameras per scene: extrinsics [B, V, 4, 4] camera-to-world (OpenCV), intrinsics [B, V, 3, 3] normalised,
    near/far [B, V]."""

    extrinsics: Tensor
    intrinsics: Tensor
    near: Tensor
    far: Tensor


def render(gaussians: Gaussians, cameras: Cameras | tuple[Tensor, Tensor, Tensor, Tensor],
           image_shape: tuple[int, int], depth_mode: DepthMode | None = None, *, backend: str = "auto",
           use_principal_point: bool = False,
           background_color: Sequence[float] | Tensor = (0.0, 0.0, 0.0)) -> DecoderOutput:
    """Render every camera of every scene in one backend call.

    cameras: (extrinsics, intrinsics, near, far), see Cameras -> color [B, V, 3, H, W], depth [B, V, H, W] when
    depth_mode is set. Runs outside autocast in at least float32: 2D covariances and transmittance need the
    precision.
    """
    extrinsics, intrinsics, near, far = cameras
    check_shapes(gaussians, extrinsics, intrinsics, near, far)
    gaussians = Gaussians(*(at_least_float32(t) for t in (gaussians.means, gaussians.covariances,
                                                          gaussians.harmonics, gaussians.opacities)))
    extrinsics, intrinsics, near, far = (at_least_float32(t) for t in (extrinsics, intrinsics, near, far))
    with torch.autocast(device_type=gaussians.means.device.type, enabled=False):
        return _render(gaussians, Cameras(extrinsics, intrinsics, near, far), image_shape, depth_mode,
                       backend=backend, use_principal_point=use_principal_point, background_color=background_color)


def at_least_float32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _render(gaussians: Gaussians, cameras: Cameras, image_shape: tuple[int, int], depth_mode: DepthMode | None, *,
            backend: str, use_principal_point: bool, background_color: Sequence[float] | Tensor) -> DecoderOutput:
    extrinsics, intrinsics, near, far = cameras
    if depth_mode is not None and depth_mode not in DEPTH_MODES:
        raise ValueError(f"depth_mode={depth_mode!r}: expected None or one of {DEPTH_MODES}")
    height, width = image_shape = (int(image_shape[0]), int(image_shape[1]))
    b, v = extrinsics.shape[:2]
    kind = resolve_backend(backend, gaussians.means.device)

    world_to_camera = extrinsics.inverse()
    k_pixel = pixel_intrinsics(intrinsics, image_shape, use_principal_point)
    features = view_dependent_colors(gaussians, extrinsics)  # [B, V, G, 3]
    background = torch.as_tensor(background_color, dtype=features.dtype, device=features.device)
    if depth_mode is not None:
        z = torch.einsum("bvj,bgj->bvg", world_to_camera[..., 2, :3], gaussians.means) + world_to_camera[..., 2, 3, None]
        features = torch.cat([features, depth_feature(z, near, far, depth_mode)[..., None]], dim=-1)
        background = torch.cat([background, background.new_zeros(1)])  # depth is splatted on black

    if kind == "gsplat":
        from .rasterize_gsplat import rasterize_gsplat

        image, alpha = rasterize_gsplat(gaussians, features, world_to_camera, k_pixel, near, image_shape, background)
    else:
        projected = project_gaussians(gaussians.means, gaussians.covariances, world_to_camera, k_pixel, near,
                                      image_shape)
        opacities = gaussians.opacities[:, None].expand(b, v, -1).flatten(0, 1)
        rasterize = rasterize_cpu if kind == "cpu" else rasterize_torch  # cpu falls back to torch by itself
        image, alpha = rasterize(projected, opacities, features.flatten(0, 1), image_shape, background)
        image, alpha = image.view(b, v, height, width, -1), alpha.view(b, v, height, width)

    color = image[..., :3].permute(0, 1, 4, 2, 3)
    depth = None
    if depth_mode is not None:
        depth = image[..., 3]
        if depth_mode == "expected_depth":
            depth = depth / alpha.clamp_min(1e-10)
    return DecoderOutput(color=color, depth=depth, alpha=alpha)
