"""MVSplat as one module: encoder -> Gaussians -> decoder -> losses.

`forward` is the training step, so that under DDP the gradient-sync hooks fire through the
Fabric-wrapped forward. `validation_step` renders what a person looks at in TensorBoard.
The state_dict holds only `encoder.*` keys, the original Lightning layout.
"""

from typing import Mapping

import torch
from torch import Tensor, nn

from ..visualization.layout import colorize_depth, comparison_grid, vcat
from ..visualization.validation_3d import camera_image, depth_video_colors, projection_cameras, projection_image
from ..visualization.trajectories import (
    generate_wobble,
    interpolate_extrinsics,
    interpolate_intrinsics,
    smooth_t,
)
from .decoder import DecoderSplatting, render
from .encoder import EncoderCostVolume
from .encoder.plane_sweep import depth_logits_of, plane_sweep_statistics
from ..metrics import compute_depth_errors, compute_psnr, compute_ssim
from .config import ModelCfg
from .loss_config import LossCfg
from .losses import build_losses
from ..types import BatchedExample, BatchedViews, Gaussians, StepOutput, ValidationOutput


class MVSplat(nn.Module):
    """Built from its own config slices (the entry point picks them out of the root config).

    losses: the training losses, or None for a model that only renders (test mode).
    lpips_weights: where the LPIPS net for val/lpips and test scores comes from when no LPIPS loss has one.
    """

    def __init__(self, cfg: ModelCfg, losses: LossCfg | None, *, background_color: list[float],
                 depth_mode: str | None = None, video_frames: int = 30, lpips_weights: str | None = None) -> None:
        super().__init__()
        self.encoder = EncoderCostVolume(cfg.encoder)
        self.decoder = DecoderSplatting(cfg.decoder, background_color)
        self.losses = build_losses(losses) if losses is not None else nn.ModuleDict()
        self.data_shim = self.encoder.get_data_shim()
        self.depth_mode = depth_mode
        self.video_frames = video_frames
        self.lpips_metric = self._find_lpips(lpips_weights)

    def _find_lpips(self, lpips_weights: str | None) -> nn.Module | None:
        """The LPIPS net used for val/lpips and test scores: the loss's, else `lpips_weights`."""
        if "lpips" in self.losses:
            return self.losses["lpips"].lpips
        if lpips_weights is not None:
            from ..metrics.lpips import load_lpips

            return load_lpips(lpips_weights)
        return None

    # ---- the pieces ----------------------------------------------------------------------
    def encode(self, context: BatchedViews, global_step: int) -> Gaussians:
        return self.encoder(context, global_step)

    def render_views(self, gaussians: Gaussians, views: Mapping[str, Tensor], image_shape: tuple[int, int],
                     depth_mode: str | None = None):
        """Render every camera in `views` (extrinsics [B,V,4,4], intrinsics, near, far [B,V])."""
        return self.decoder(gaussians, views["extrinsics"], views["intrinsics"], views["near"], views["far"],
                            image_shape, depth_mode=depth_mode)

    # ---- training ------------------------------------------------------------------------
    def forward(self, batch: BatchedExample, global_step: int) -> StepOutput:
        batch = self.data_shim(batch)
        target = batch["target"]
        image_shape = tuple(target["image"].shape[-2:])
        gaussians = self.encode(batch["context"], global_step)
        output = self.render_views(gaussians, target, image_shape, depth_mode=self.depth_mode)

        logs: dict[str, Tensor] = {}
        total = torch.zeros((), device=output.color.device)
        for name, loss_fn in self.losses.items():
            value = loss_fn(output.color, target["image"], global_step, depth=output.depth,
                            near=target["near"], far=target["far"])
            logs[f"loss/{name}"] = value.detach()
            total = total + value
        logs["loss/total"] = total.detach()
        rendered = output.color.detach().flatten(0, 1)  # [(B V), 3, H, W]
        logs["train/psnr"] = compute_psnr(target["image"].flatten(0, 1), rendered).mean()
        logs["info/near"] = target["near"].detach().float().mean()
        logs["info/far"] = target["far"].detach().float().mean()
        return StepOutput(loss=total, logs=logs)

    # ---- validation ----------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: BatchedExample, global_step: int) -> ValidationOutput:
        """Scores, the comparison grid and the two videos for the first scene of the batch."""
        batch = self.data_shim(batch)
        context, target = batch["context"], batch["target"]
        image_shape = tuple(target["image"].shape[-2:])
        with depth_logits_of(self.encoder) as depth_logits:
            gaussians = self.encode(context, global_step)
        output = self.render_views(gaussians, target, image_shape, depth_mode="expected_depth")

        rendered = output.color[0].float()  # [V, 3, H, W]
        ground_truth = target["image"][0].float()
        scalars = {
            "val/psnr": float(compute_psnr(ground_truth, rendered).mean()),
            "val/ssim": float(compute_ssim(ground_truth, rendered).mean()),
        }
        # none under model.compile (the compiled encoder skips its parts' hooks); without a cost volume there is no
        # plane sweep to collapse (inspect skips it too)
        if depth_logits and not self.encoder.cfg.wo_cost_volume:
            # does the cost volume still decide the depth? (plane_sweep.is_collapsed reads the share)
            scalars["val/plane_sweep_commonest_share"] = plane_sweep_statistics(depth_logits[0]).commonest_share
        if self.lpips_metric is not None:
            scalars["val/lpips"] = float(self.lpips_metric(rendered, ground_truth, normalize=True).mean())
        if "depth" in target:  # ground-truth depth (our synthetic chunks): is the geometry right?
            abs_rel, delta = compute_depth_errors(target["depth"][0].float(), output.depth[0].float(),
                                                  output.alpha[0].float())
            for name, values in (("val/depth_abs_rel", abs_rel), ("val/depth_delta_1_25", delta)):
                if torch.isfinite(values).any():
                    scalars[name] = float(values[torch.isfinite(values)].mean())

        near, far = target["near"][0, 0], target["far"][0, 0]
        depth = colorize_depth(output.depth[0].float(), near, far)
        images = {"comparison": comparison_grid(context["image"][0].float(), ground_truth, rendered, depth,
                                                depth_range=(float(near), float(far)))}
        images["projection"] = self.render_projections(gaussians)
        images["cameras"] = camera_image(
            torch.cat([context["extrinsics"][0], target["extrinsics"][0]]),
            torch.cat([context["intrinsics"][0], target["intrinsics"][0]]),
            torch.cat([context["near"][0], target["near"][0]]), torch.cat([context["far"][0], target["far"][0]]),
            colors=torch.tensor([[1.0, 1.0, 1.0]] * context["extrinsics"].shape[1]  # contexts white, targets red
                                + [[1.0, 0.0, 0.0]] * target["extrinsics"].shape[1]))
        videos = {"interpolation": self.render_video_interpolation(gaussians, context, target, image_shape)}
        if context["extrinsics"].shape[1] == 2:
            videos["wobble"] = self.render_video_wobble(gaussians, context, image_shape)
        return ValidationOutput(scalars=scalars, images=images, videos=videos)

    def render_projections(self, gaussians: Gaussians, resolution: int = 256) -> Tensor:
        """The first scene's Gaussians seen along each world axis through a nearly orthographic camera."""
        gaussians_0 = first_scene(gaussians)
        extrinsics, intrinsics, near, far = projection_cameras(gaussians_0.means.float())
        output = render(gaussians_0, (extrinsics, intrinsics, near, far), (resolution, resolution),
                        backend=self.decoder.cfg.backend, background_color=(0.0, 0.0, 0.0))  # on black, as the original
        return projection_image(output.color[0].float())

    def _render_frames(self, gaussians: Gaussians, extrinsics: Tensor, intrinsics: Tensor, near: Tensor,
                       far: Tensor, image_shape: tuple[int, int]) -> Tensor:
        """extrinsics [T,4,4], intrinsics [T,3,3] for the first scene -> [2T - 2, 3, 2H, W]: RGB over depth (coloured
        as the original's videos), played forward then backward without repeating the ends (its loop_reverse)."""
        gaussians_0 = first_scene(gaussians)
        num_frames = extrinsics.shape[0]
        near_t = near.expand(1, num_frames)
        far_t = far.expand(1, num_frames)
        output = self.decoder(gaussians_0, extrinsics[None].float(), intrinsics[None].float(), near_t, far_t,
                              image_shape, depth_mode="depth")
        color = output.color[0].clamp(0, 1).float()
        depth = depth_video_colors(output.depth[0].float())
        frames = torch.stack([vcat([c, d], gap=0) for c, d in zip(color, depth)])
        return torch.cat([frames, frames.flip(0)[1:-1]])

    def render_video_interpolation(self, gaussians: Gaussians, context: BatchedViews, target: BatchedViews,
                                   image_shape: tuple[int, int]) -> Tensor:
        """`video_frames` eased steps from context 0 to context 1 (with more than 2 contexts: to target 0, as the
        original), then back."""
        end = context if context["extrinsics"].shape[1] == 2 else target
        end_index = 1 if end is context else 0
        t = smooth_t(self.video_frames).to(context["extrinsics"].device)
        extrinsics = interpolate_extrinsics(context["extrinsics"][0, 0], end["extrinsics"][0, end_index], t)
        intrinsics = interpolate_intrinsics(context["intrinsics"][0, 0], end["intrinsics"][0, end_index], t)
        return self._render_frames(gaussians, extrinsics, intrinsics, context["near"][0, :1],
                                   context["far"][0, :1], image_shape)

    def render_video_wobble(self, gaussians: Gaussians, context: BatchedViews,
                            image_shape: tuple[int, int]) -> Tensor:
        """2 x `video_frames` eased steps circling in the image plane of context 0 with a radius growing to 1/4 of the
        baseline, then back (2 context views only, as the original)."""
        origins = context["extrinsics"][0, :, :3, 3]
        radius = (origins[0] - origins[1]).norm() * 0.25
        t = smooth_t(2 * self.video_frames).to(origins.device)
        extrinsics = generate_wobble(context["extrinsics"][0, 0], radius, t)
        intrinsics = context["intrinsics"][0, 0].expand(t.shape[0], 3, 3)
        return self._render_frames(gaussians, extrinsics, intrinsics, context["near"][0, :1],
                                   context["far"][0, :1], image_shape)


def first_scene(gaussians: Gaussians) -> Gaussians:
    """The batch's first scene, keeping the batch dimension ([1, G, ...]): what validation visualises."""
    return Gaussians(*(t[:1] for t in (gaussians.means, gaussians.covariances, gaussians.harmonics,
                                       gaussians.opacities)))


def build_model(cfg: ModelCfg, losses: LossCfg | None, *, background_color: list[float],
                depth_mode: str | None = None, video_frames: int = 30, lpips_weights: str | None = None,
                load_unimatch_backbone: bool = False) -> MVSplat:
    """The model; with `load_unimatch_backbone` (training from scratch) the UniMatch backbone comes from
    `cfg.encoder.unimatch_weights_path` when set (a resumed or fine-tuned run overwrites every encoder weight
    from its checkpoint)."""
    model = MVSplat(cfg, losses, background_color=background_color, depth_mode=depth_mode,
                    video_frames=video_frames, lpips_weights=lpips_weights)
    if load_unimatch_backbone and cfg.encoder.unimatch_weights_path is not None:
        from .encoder import load_unimatch_backbone as load_backbone

        load_backbone(model.encoder, cfg.encoder.unimatch_weights_path)
    return model
