"""Typed config of the cost-volume encoder (`fabric_mvsplat/configs/model/encoder/costvolume.yaml`)."""

from dataclasses import dataclass, field
from typing import Literal

from ...errors import ConfigError


@dataclass
class OpacityMappingCfg:
    initial: float = 0.0
    final: float = 0.0
    warm_up: int = 1

    def __post_init__(self) -> None:
        if self.warm_up < 1:
            raise ConfigError("warm_up", self.warm_up, "an integer >= 1 (steps)")


@dataclass
class GaussianAdapterCfg:
    gaussian_scale_min: float = 0.5
    gaussian_scale_max: float = 15.0
    sh_degree: int = 4
    # Added: start each Gaussian's SH DC term at its pixel's colour, so the head predicts a residual; false (the
    # original): the head predicts the whole colour. From the first step the Gaussians then render the context
    # images reprojected by the predicted depth, and training spends its steps on geometry.
    colour_from_pixel: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.sh_degree <= 4:
            raise ConfigError("sh_degree", self.sh_degree, "an integer in [0, 4]")
        if not 0 < self.gaussian_scale_min < self.gaussian_scale_max:
            raise ConfigError(
                "gaussian_scale_min", self.gaussian_scale_min, "0 < gaussian_scale_min < gaussian_scale_max"
            )


@dataclass
class VisualizerCfg:
    """Kept for config compatibility with the original; its visualizer is disabled there too."""

    num_samples: int = 8
    min_resolution: int = 256
    export_ply: bool = False


@dataclass
class EncoderCostVolumeCfg:
    name: Literal["costvolume"] = "costvolume"
    d_feature: int = 128
    num_depth_candidates: int = 32
    num_surfaces: int = 1
    gaussians_per_pixel: int = 1
    gaussian_adapter: GaussianAdapterCfg = field(default_factory=GaussianAdapterCfg)
    opacity_mapping: OpacityMappingCfg = field(default_factory=OpacityMappingCfg)
    visualizer: VisualizerCfg = field(default_factory=VisualizerCfg)
    unimatch_weights_path: str | None = "checkpoints/gmdepth-scale1-resumeflowthings-scannet-5d9d7964.pth"
    multiview_trans_attn_split: int = 2
    costvolume_unet_feat_dim: int = 128
    costvolume_unet_channel_mult: list[int] = field(default_factory=lambda: [1, 1, 1])
    costvolume_unet_attn_res: list[int] = field(default_factory=list)
    depth_unet_feat_dim: int = 64
    depth_unet_attn_res: list[int] = field(default_factory=list)
    depth_unet_channel_mult: list[int] = field(default_factory=lambda: [1, 1, 1])
    downscale_factor: int = 4
    shim_patch_size: int = 4
    wo_depth_refine: bool = False
    wo_cost_volume: bool = False
    wo_backbone_cross_attn: bool = False
    wo_cost_volume_refine: bool = False
    use_epipolar_trans: bool = False
    # Added: recompute the U-Net attention blocks in backward (the original always does).
    gradient_checkpointing: bool = True
    # Added: attention through torch's fused scaled_dot_product_attention ("sdpa") or the original's
    # explicit softmax(q k^T / sqrt(d)) v ("original"); both pass golden parity.
    attention: Literal["sdpa", "original"] = "sdpa"
    # Added: recompute each transformer block in backward (its activations are the encoder's largest
    # saved part at 256x256); costs about one more transformer forward per step.
    transformer_checkpointing: bool = False
    # Added: plane-sweep correlation by warping features ("warp", the original's arithmetic), by
    # sampling a per-pixel correlation map ("correlate", same weights, sums swapped) or whichever is
    # smaller in memory ("auto": correlate while (H/4 * W/4) <= d_feature * num_depth_candidates).
    cost_volume: Literal["auto", "warp", "correlate"] = "auto"
    # Added: how the refined disparity is held in [1/far, 1/near]. "hard" (the original): clamp, which passes no
    # gradient once a pixel is outside, so a step that pushes every pixel past 1/far leaves all Gaussians at the far
    # plane for good. "straight_through": the same clamped values, with the gradient passed as if unclamped.
    disparity_clamp: Literal["hard", "straight_through"] = "hard"
    # Added: hidden channels of the full-resolution Gaussian head (conv 3x3, GELU, conv 3x3 -> raw Gaussian channels).
    # null: twice the raw channels, as the original (168 at SH degree 4, where the head is a third of a 64x64 CPU
    # step); a smaller width keeps every output channel, view-dependent colour included, at a fraction of the cost.
    gaussian_head_hidden_channels: int | None = None

    def __post_init__(self) -> None:
        positive = ("d_feature", "num_depth_candidates", "num_surfaces", "gaussians_per_pixel",
                    "multiview_trans_attn_split", "costvolume_unet_feat_dim", "depth_unet_feat_dim",
                    "shim_patch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(key, getattr(self, key), "a positive integer")
        if self.gaussian_head_hidden_channels is not None and self.gaussian_head_hidden_channels < 1:
            raise ConfigError("gaussian_head_hidden_channels", self.gaussian_head_hidden_channels,
                              "a positive integer, or null for twice the raw Gaussian channels (the original)")
        if self.downscale_factor not in (4, 8):
            raise ConfigError("downscale_factor", self.downscale_factor, "4 or 8 (the CNN's feature stride)")
        if self.use_epipolar_trans:
            raise ConfigError(
                "use_epipolar_trans", True,
                "false: the epipolar-transformer ablation (Table B) is not supported by fabric_mvsplat",
            )
        if self.wo_cost_volume_refine and self.costvolume_unet_feat_dim != self.num_depth_candidates:
            raise ConfigError(
                "costvolume_unet_feat_dim", self.costvolume_unet_feat_dim,
                f"equal to num_depth_candidates ({self.num_depth_candidates}) when wo_cost_volume_refine is set "
                "(the projection output feeds the depth head directly)",
            )
