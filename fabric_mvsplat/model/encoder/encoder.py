"""MVSplat's cost-volume encoder: context views -> one (or gpp) 3D Gaussian(s) per pixel."""

import math
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from ...camera import center_crop_box, crop_intrinsics
from ...types import BatchedExample, BatchedViews, Gaussians
from .backbone import BackboneMultiview
from .config import EncoderCostVolumeCfg, OpacityMappingCfg
from .depth_predictor import DepthPredictorMultiView
from .gaussian_adapter import GaussianAdapter, sample_image_grid


def map_pdf_to_opacity(pdf: Tensor, global_step: int, cfg: OpacityMappingCfg) -> Tensor:
    """Exponent schedule 2^x, x from initial to final over warm_up steps; identity when x = 0."""
    x = cfg.initial + min(global_step / cfg.warm_up, 1) * (cfg.final - cfg.initial)
    exponent = 2**x
    return 0.5 * (1 - (1 - pdf) ** exponent + pdf ** (1 / exponent))


def crop_views_to_patch(views: BatchedViews, patch_size: int) -> BatchedViews:
    """Centre-crop H, W down to multiples of patch_size; fx, fy rescaled, cx, cy kept (as the original)."""
    *_, h, w = views["image"].shape
    if h % 2 or w % 2:
        raise ValueError(f"image size {h}x{w} must be even so that centre-cropping keeps pixels aligned")
    h_new, w_new = (h // patch_size) * patch_size, (w // patch_size) * patch_size
    row, col = center_crop_box((h, w), (h_new, w_new))
    intrinsics = crop_intrinsics(views["intrinsics"], (h, w), (h_new, w_new))
    cropped = {**views, "image": views["image"][..., row:row + h_new, col:col + w_new], "intrinsics": intrinsics}
    if "depth" in views:  # ground-truth depth [B, V, H, W] must stay aligned with the cropped images
        cropped["depth"] = views["depth"][..., row:row + h_new, col:col + w_new]
    return cropped


class EncoderCostVolume(nn.Module):
    def __init__(self, cfg: EncoderCostVolumeCfg) -> None:
        """Any number of context views >= 2 works: the view count is read from the batch (the original sized
        the U-Net's joint attention from the config); the data config checks the count."""
        super().__init__()
        self.cfg = cfg
        self.backbone = BackboneMultiview(cfg.d_feature, cfg.downscale_factor, cfg.wo_backbone_cross_attn,
                                          cfg.attention, cfg.transformer_checkpointing)
        self.gaussian_adapter = GaussianAdapter(cfg.gaussian_adapter)
        self.depth_predictor = DepthPredictorMultiView(
            cfg, gaussian_raw_channels=cfg.num_surfaces * (self.gaussian_adapter.d_in + 2))

    def required_multiple(self) -> int:
        """Smallest number that the image height and width must be multiples of."""
        cfg = self.cfg
        multiples = [cfg.downscale_factor * cfg.multiview_trans_attn_split]
        if not cfg.wo_cost_volume_refine:
            multiples.append(cfg.downscale_factor * 2 ** (len(cfg.costvolume_unet_channel_mult) - 1))
        if not cfg.wo_depth_refine:
            multiples.append(2 ** (len(cfg.depth_unet_channel_mult) - 1))
        return math.lcm(*multiples)

    def map_pdf_to_opacity(self, pdf: Tensor, global_step: int) -> Tensor:
        return map_pdf_to_opacity(pdf, global_step, self.cfg.opacity_mapping)

    def forward(self, context: BatchedViews, global_step: int, visualization_dump: dict | None = None) -> Gaussians:
        """context: image [b, v, 3, H, W] in [0, 1], c2w extrinsics, normalised intrinsics, near/far [b, v].

        H and W must be multiples of 16 with the default config (apply `get_data_shim()` first).
        """
        images = context["image"]
        b, v, _, h, w = images.shape
        patch = self.required_multiple()
        if h % patch or w % patch:
            raise ValueError(
                f"context image size {h}x{w} must be a multiple of {patch} (feature stride x U-Net depth x "
                "attention windows); apply encoder.get_data_shim() to the batch first"
            )
        if v < 2:
            raise ValueError(f"the cost-volume encoder needs at least 2 context views, got {v}")

        features, cnn_features = self.backbone(images, self.cfg.multiview_trans_attn_split)
        depths, densities, raw_gaussians = self.depth_predictor(
            features, cnn_features, images, context["intrinsics"], context["extrinsics"], context["near"], context["far"]
        )

        # Pixel centres shifted by a learned sub-pixel offset within +-1/2 pixel.
        xy_ray, _ = sample_image_grid((h, w), images.device)
        xy_ray = rearrange(xy_ray, "h w xy -> (h w) () xy")
        raw = rearrange(raw_gaussians, "... (srf c) -> ... srf c", srf=self.cfg.num_surfaces)
        pixel_size = 1 / torch.tensor((w, h), dtype=torch.float32, device=images.device)
        xy_ray = xy_ray + (raw[..., :2].sigmoid() - 0.5) * pixel_size

        gpp = self.cfg.gaussians_per_pixel
        gaussians = self.gaussian_adapter(
            rearrange(context["extrinsics"], "b v i j -> b v () () () i j"),
            rearrange(context["intrinsics"], "b v i j -> b v () () () i j"),
            rearrange(xy_ray, "b v r srf xy -> b v r srf () xy"),
            depths,
            self.map_pdf_to_opacity(densities, global_step) / gpp,
            rearrange(raw[..., 2:], "b v r srf c -> b v r srf () c"),
            (h, w),
            pixel_colours=rearrange(images, "b v rgb h w -> b v (h w) () () rgb"),
        )

        if visualization_dump is not None:
            visualization_dump["depth"] = rearrange(depths, "b v (h w) srf s -> b v h w srf s", h=h, w=w)
            visualization_dump["scales"] = rearrange(gaussians.scales, "b v r srf spp xyz -> b (v r srf spp) xyz")
            visualization_dump["rotations"] = rearrange(
                gaussians.rotations, "b v r srf spp xyzw -> b (v r srf spp) xyzw")

        return Gaussians(
            means=rearrange(gaussians.means, "b v r srf spp xyz -> b (v r srf spp) xyz"),
            covariances=rearrange(gaussians.covariances, "b v r srf spp i j -> b (v r srf spp) i j"),
            harmonics=rearrange(gaussians.harmonics, "b v r srf spp c d_sh -> b (v r srf spp) c d_sh"),
            opacities=rearrange(gaussians.opacities, "b v r srf spp -> b (v r srf spp)"),
        )

    def get_data_shim(self) -> Callable[[BatchedExample], BatchedExample]:
        """Centre-crops context and target to multiples of shim_patch_size * downscale_factor."""
        patch_size = self.cfg.shim_patch_size * self.cfg.downscale_factor

        def data_shim(batch: BatchedExample) -> BatchedExample:
            return {**batch, "context": crop_views_to_patch(batch["context"], patch_size),
                    "target": crop_views_to_patch(batch["target"], patch_size)}

        return data_shim
