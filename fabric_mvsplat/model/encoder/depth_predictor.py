"""Cost volume -> coarse depth (1/4 res) -> refined full-res depth, opacity and raw Gaussian channels.

Everything inside runs in `(v b)` order (view-major); outputs are `b v ...`.
"""

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from .config import EncoderCostVolumeCfg
from .cost_volume import correlation_volume, disparity_candidates
from .unet import UNetModel, ViewSequential


class DepthPredictorMultiView(nn.Module):
    def __init__(self, cfg: EncoderCostVolumeCfg, gaussian_raw_channels: int) -> None:
        """cfg: the encoder's config slice; gaussian_raw_channels: what the Gaussian adapter reads per surface."""
        super().__init__()
        feature_channels, upscale_factor = cfg.d_feature, cfg.downscale_factor
        num_depth_candidates, gaussians_per_pixel = cfg.num_depth_candidates, cfg.gaussians_per_pixel
        costvolume_unet_feat_dim, depth_unet_feat_dim = cfg.costvolume_unet_feat_dim, cfg.depth_unet_feat_dim
        wo_depth_refine, wo_cost_volume = cfg.wo_depth_refine, cfg.wo_cost_volume
        wo_cost_volume_refine, cost_volume = cfg.wo_cost_volume_refine, cfg.cost_volume
        unet = {"gradient_checkpointing": cfg.gradient_checkpointing, "attention_kind": cfg.attention}
        self.num_depth_candidates = num_depth_candidates
        self.upscale_factor = upscale_factor
        self.gaussians_per_pixel = gaussians_per_pixel
        self.wo_depth_refine = wo_depth_refine
        self.wo_cost_volume = wo_cost_volume
        self.wo_cost_volume_refine = wo_cost_volume_refine
        self.cost_volume = cost_volume
        self.straight_through_clamp = cfg.disparity_clamp == "straight_through"
        d, c = num_depth_candidates, feature_channels

        # Cost-volume refinement (1/4 resolution).
        in_channels = c if wo_cost_volume else d + c
        width = costvolume_unet_feat_dim
        if wo_cost_volume_refine:
            # The original feeds this `width`-channel output straight into a D-channel head.
            self.corr_project = nn.Conv2d(in_channels, width, 3, padding=1)
        else:
            self.corr_refine_net = ViewSequential(
                nn.Conv2d(in_channels, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.GELU(),
                UNetModel(width, list(cfg.costvolume_unet_attn_res), list(cfg.costvolume_unet_channel_mult), **unet),
                nn.Conv2d(width, d, 3, padding=1),
            )
            self.regressor_residual = nn.Conv2d(in_channels, d, 1)

        self.depth_head_lowres = nn.Sequential(
            nn.Conv2d(d, 2 * d, 3, padding=1), nn.GELU(), nn.Conv2d(2 * d, d, 3, padding=1)
        )

        # Full-resolution features from transformer + CNN features.
        self.upsampler = nn.Sequential(
            nn.Conv2d(2 * c, c, 3, padding=1),
            nn.Upsample(scale_factor=upscale_factor, mode="bilinear", align_corners=True),
            nn.GELU(),
        )
        self.proj_feature = nn.Conv2d(c, depth_unet_feat_dim, 3, padding=1)

        # Depth refinement on cat(image, projected features, coarse disparity, confidence).
        refine_in = 3 + depth_unet_feat_dim + 1 + 1
        width = depth_unet_feat_dim
        if wo_depth_refine:
            self.refine_unet = nn.Conv2d(refine_in, width, 3, padding=1)
        else:
            self.refine_unet = ViewSequential(
                nn.Conv2d(refine_in, width, 3, padding=1),
                nn.GroupNorm(4, width),
                nn.GELU(),
                UNetModel(width, list(cfg.depth_unet_attn_res), list(cfg.depth_unet_channel_mult), **unet),
            )

        gaussians_in = depth_unet_feat_dim + 3 + c
        hidden = cfg.gaussian_head_hidden_channels or 2 * gaussian_raw_channels
        self.to_gaussians = nn.Sequential(
            nn.Conv2d(gaussians_in, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, gaussian_raw_channels, 3, padding=1),
        )
        if not wo_depth_refine:
            self.to_disparity = nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(2 * width, 2 * gaussians_per_pixel, 3, padding=1),
            )

    def forward(self, features: Tensor, cnn_features: Tensor, images: Tensor, intrinsics: Tensor,
                extrinsics: Tensor, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features, cnn_features [b, v, C, h, w]; images [b, v, 3, H, W]; near/far [b, v].

        Returns depths [b, v, H*W, 1, gpp], densities (same), raw_gaussians [b, v, H*W, R].
        """
        b, v = features.shape[:2]
        ref_features = rearrange(features, "b v ... -> (v b) ...")
        disparities = disparity_candidates(near, far, self.num_depth_candidates, features.dtype)

        if self.wo_cost_volume:
            volume_in = ref_features
        else:
            volume = correlation_volume(features, intrinsics, extrinsics, disparities, self.cost_volume)
            volume_in = torch.cat((volume, ref_features), dim=1)

        if self.wo_cost_volume_refine:
            volume = self.corr_project(volume_in)
        else:
            volume = self.corr_refine_net(volume_in, v) + self.regressor_residual(volume_in)

        pdf = F.softmax(self.depth_head_lowres(volume), dim=1)
        coarse_disparity = (disparities * pdf).sum(dim=1, keepdim=True)
        confidence = F.interpolate(pdf.max(dim=1, keepdim=True).values, scale_factor=self.upscale_factor)
        disparity = F.interpolate(coarse_disparity, scale_factor=self.upscale_factor, mode="bilinear",
                                  align_corners=True)

        fullres_features = self.upsampler(torch.cat((ref_features, rearrange(cnn_features, "b v ... -> (v b) ...")), 1))
        proj_feature = self.proj_feature(fullres_features)
        images = rearrange(images, "b v ... -> (v b) ...")
        refine_in = torch.cat((images, proj_feature, disparity, confidence), dim=1)
        refined = self.refine_unet(refine_in) if self.wo_depth_refine else self.refine_unet(refine_in, v)

        raw_gaussians = self.to_gaussians(torch.cat((refined, images, fullres_features), dim=1))
        raw_gaussians = rearrange(raw_gaussians, "(v b) c h w -> b v (h w) c", v=v, b=b)

        to_pixels = "(v b) dpt h w -> b v (h w) srf dpt"
        if self.wo_depth_refine:
            densities = repeat(confidence, to_pixels, b=b, v=v, srf=1)
            depths = repeat(1.0 / disparity, to_pixels, b=b, v=v, srf=1)
        else:
            delta_disparity, raw_density = self.to_disparity(refined).split(self.gaussians_per_pixel, dim=1)
            densities = repeat(raw_density.sigmoid(), to_pixels, b=b, v=v, srf=1)
            unclamped = disparity + delta_disparity
            fine_disparity = unclamped.clamp(
                1.0 / rearrange(far, "b v -> (v b) () () ()"), 1.0 / rearrange(near, "b v -> (v b) () () ()")
            )
            if self.straight_through_clamp:  # clamped values (+ an exact 0), identity gradient: no dead zone
                fine_disparity = fine_disparity.detach() + (unclamped - unclamped.detach())
            depths = repeat(1.0 / fine_disparity, to_pixels, b=b, v=v, srf=1)
        return depths, densities, raw_gaussians
