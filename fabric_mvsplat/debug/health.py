"""What the predicted Gaussians and the gradients look like: statistics shared by mode=inspect and the
TensorBoard histograms written every debug.health_every_n_steps steps while training.

A collapse (every Gaussian at the far plane, opacities at 0, one sub-network's gradients vanishing) shows in
these histograms the step it starts, long before the loss curve or validation images make it obvious.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from ..types import BatchedViews, Gaussians

# Sub-networks are split this deep below a top-level child (encoder.depth_predictor.refine_unet); other top-level
# children (decoder, losses) are one part each.
PART_DEPTH = {"encoder": 3}
AT_PLANE = 0.01  # within 1% of the disparity range of near or far: "at the plane"


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """Non-overlapping named sub-modules: encoder sub-networks three levels deep, other children whole."""
    parts = {}
    for name, module in model.named_modules():
        if not name:
            continue
        depth = name.count(".") + 1
        limit = PART_DEPTH.get(name.split(".")[0], 1)
        if depth == limit or (depth < limit and not any(True for _ in module.children())):
            parts[name] = module
    return parts


def gradient_norms(parts: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Per part: [P] the L2 norms of its parameters' gradients (parts without gradients left out)."""
    norms = {}
    for name, module in parts.items():
        grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
        if grads:
            norms[name] = torch.stack(grads)
    return norms


def gaussian_statistics(gaussians: Gaussians, context: BatchedViews) -> dict[str, Tensor]:
    """Flat per-Gaussian values (float32, on the Gaussians' device):

    depth    the Gaussian's distance from the context camera it came from (its depth along the pixel's ray, as
             the encoder predicts it), as a position between near (0) and far (1) in disparity, the spacing of
             the cost volume's depth candidates (values outside [0, 1]: beyond the planes)
    opacity  in [0, 1]
    scale    the largest axis of its covariance ellipsoid, world units
    """
    extrinsics, near, far = context["extrinsics"].float(), context["near"].float(), context["far"].float()
    views = extrinsics.shape[1]
    means = rearrange(gaussians.means.detach().float(), "b (v n) xyz -> b v n xyz", v=views)
    origins = extrinsics[:, :, None, :3, 3]
    distance = (means - origins).norm(dim=-1)  # [b, v, n]: the model places each Gaussian along its pixel's ray
    disparity = 1 / distance.clamp_min(1e-6)
    near, far = near[..., None], far[..., None]
    position = (1 / near - disparity) / (1 / near - 1 / far)
    covariances = gaussians.covariances.detach().float()
    largest = torch.linalg.eigvalsh(covariances)[..., -1].clamp_min(0).sqrt()
    return {"depth": position.flatten(), "opacity": gaussians.opacities.detach().float().flatten(),
            "scale": largest.flatten()}


def plane_fractions(depth_position: Tensor) -> tuple[float, float]:
    """(fraction at the near plane, fraction at the far plane) of `gaussian_statistics(...)["depth"]`."""
    return float((depth_position <= AT_PLANE).float().mean()), float((depth_position >= 1 - AT_PLANE).float().mean())


class HealthHistograms:
    """Every `every` steps: histograms of the Gaussians of that step (captured by a forward hook on the encoder,
    installed only when on) and of the gradient norms per model part, written by rank 0.

    Off (every=None) it installs nothing and each call returns at once: training costs nothing extra.
    """

    def __init__(self, every: int | None, model: nn.Module, writer) -> None:
        self.every, self.writer = every, writer
        self.captured: list[tuple[Gaussians, BatchedViews]] = []
        self.parts = model_parts(model) if every else {}
        encoder = getattr(model, "encoder", None)
        self.hook = None
        if every and encoder is not None:
            self.hook = encoder.register_forward_hook(self._capture)

    def due(self, step: int) -> bool:
        """The forward of step index `step`; written at `step + 1`, the step count TensorBoard shows."""
        return self.every is not None and (step + 1) % self.every == 0

    def _capture(self, encoder: nn.Module, args: tuple, output) -> None:
        context, step = args[0], args[1]
        if isinstance(output, Gaussians) and encoder.training and self.due(step):
            self.captured.append((output, {key: context[key].detach() for key in ("extrinsics", "near", "far")}))

    def write(self, step: int) -> None:
        """After backward, before the optimizer step (the gradients are there)."""
        if not self.due(step):
            return
        written = step + 1
        for name, norms in gradient_norms(self.parts).items():
            self.writer.histogram(f"health/grad_norm/{name}", norms, written)
            self.writer.scalars({f"health/grad_norm/{name}": float(norms.square().sum().sqrt())}, written)
        if self.captured:
            stats = [gaussian_statistics(gaussians, context) for gaussians, context in self.captured]
            for key in ("depth", "opacity", "scale"):
                self.writer.histogram(f"health/gaussian_{key}", torch.cat([s[key] for s in stats]), written)
            near, far = plane_fractions(torch.cat([s["depth"] for s in stats]))
            self.writer.scalars({"health/gaussians_at_near": near, "health/gaussians_at_far": far}, written)
        self.captured = []

    def close(self) -> None:
        if self.hook is not None:
            self.hook.remove()
