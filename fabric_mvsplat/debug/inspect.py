"""mode=inspect: what the model is fed and what it makes of it, without training.

`python -m fabric_mvsplat.train +experiment=demo mode=inspect` composes the config, builds data and model (with
checkpointing.load's weights when set), reads debug.inspect_batches real training batches and prints:
the config's differences from the defaults, parameters per model part, each batch's shapes and value ranges
(images, near/far, baseline, camera positions, context gap), one forward and backward's time and peak memory
per model part, gradient norms per model part, the plane sweep's depth-candidate probabilities, statistics
of the predicted Gaussians and how far the plane sweep can see in a validation scene's context views. It saves
output_dir/inspect/cameras.png (top-down and side views of the cameras) and images_depth.png (the batch's
images with the predicted depth), writes the report to output_dir/inspect/report.txt, and ends with the
problems it found: cameras that are not rotations, targets outside the context baseline, near/far that
exclude most depths, every Gaussian at one plane, a plane sweep that picks one depth candidate everywhere, context
views that barely move against each other between the near and far planes.
"""

import dataclasses
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ..checkpoint import load_weights
from ..config import CONFIG_DIR, RootCfg
from ..data import StepTracker, TrainStream, ValidationSource
from ..data.chunk_io import camera_problem, rotation_defects
from ..data.chunks import ChunkCache, SceneRejected, list_scenes
from ..errors import DatasetError
from ..evaluation.media import save_image
from ..model.encoder.cost_volume import disparity_candidates
from ..model.encoder.plane_sweep import depth_logits_of, plane_sweep_statistics
from ..types import Gaussians
from ..visualization.layout import colorize_depth, hcat, image_tensor, label_rows, vcat
from .health import gaussian_statistics, gradient_norms, model_parts, plane_fractions
from .parallax import COLOUR_WINDOW, DELTA, sweep_reach

ROTATION_TOLERANCE = 1e-3
BASELINE_TOLERANCE = 0.1  # a target may lie 10% of the baseline beyond either context camera
MOST = 0.5  # "most depths": more than half
NARROW_REACH = 2.0  # feature pixels between the near and far planes: less, and the plane sweep sees no depth
SCENES_TO_SCAN = 256  # training scenes whose cameras are checked (the data loader skips bad ones silently)


class ForwardCapture(NamedTuple):
    """What the inspected forward produced, captured by hooks on the encoder and its depth head."""

    gaussians: Gaussians
    context: dict  # the encoder's input views, after the data shim
    rendered: object  # DecoderOutput of the targets with depth, for the picture
    depth_logits: Tensor | None  # [(v b), D, h, w] the depth head's output before its softmax over the D candidates;
    # None under model.compile, whose compiled encoder does not call the forward hooks of its parts


# ---------------------------------------------------------------------------------------------- entry point
def run_inspect(fabric, cfg: RootCfg, model: nn.Module, output_dir: Path, config_yaml: str | None) -> dict:
    """Rank 0 inspects (the others wait); -> {"problems": [...], "report": path, "pictures": [paths]}."""
    result = {"problems": [], "report": None, "pictures": []}
    if fabric.global_rank == 0:
        result = Inspection(fabric, cfg, model, Path(output_dir) / "inspect").run(config_yaml)
    fabric.barrier()
    return result


class Inspection:
    def __init__(self, fabric, cfg: RootCfg, model: nn.Module, directory: Path) -> None:
        self.fabric, self.cfg, self.model, self.directory = fabric, cfg, model, directory
        self.lines: list[str] = []
        self.problems: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def section(self, title: str) -> None:
        self.say()
        self.say(f"== {title} ==")

    def run(self, config_yaml: str | None) -> dict:
        cfg = self.cfg
        self.section("config: differences from the defaults (python -m fabric_mvsplat.train with no arguments)")
        for line in config_differences(config_yaml, cfg):
            self.say("  " + line)
        # The global step the forward runs at (the opacity schedule depends on it): the checkpoint's, else 0.
        step = 0
        if cfg.checkpointing.load is not None:
            checkpoint = load_weights(self.model, cfg.checkpointing.load, cfg.checkpointing.allow_unsafe_load)
            step = int(checkpoint.get("global_step", 0))
            self.say(f"  weights from {cfg.checkpointing.load}")
        self.report_parameters()
        self.report_scene_cameras()
        batches, stream = self.read_batches()
        for number, batch in enumerate(batches):
            self.report_batch(number, batch)
        self.report_skips(stream)
        forward = self.report_forward_backward(batches[0], step)
        if not cfg.model.encoder.wo_cost_volume:
            self.report_plane_sweep(forward.depth_logits, forward.context)
        self.report_gaussians(forward.gaussians, forward.context)
        validation = self.read_validation_batch()
        if validation is not None:
            self.report_ground_truth_depth(validation)
            if not cfg.model.encoder.wo_cost_volume:
                self.report_sweep_reach(validation)
        self.directory.mkdir(parents=True, exist_ok=True)
        pictures = [self.directory / "cameras.png", self.directory / "images_depth.png"]
        save_camera_picture(batches, pictures[0])
        save_image(images_and_depth(batches[0], forward.gaussians, forward.rendered), pictures[1])
        self.section("pictures")
        for path in pictures:
            self.say(f"  {path}")
        self.section("problems")
        for problem in self.problems or ["none found"]:
            self.say(f"  {problem}")
        report = self.directory / "report.txt"
        report.write_text("\n".join(self.lines) + "\n")
        return {"problems": list(self.problems), "report": report, "pictures": pictures}

    # ---- the model ---------------------------------------------------------------------------------------
    def report_parameters(self) -> None:
        self.section("parameters per model part")
        total = sum(p.numel() for p in self.model.parameters())
        for name, part in model_parts(self.model).items():
            count = sum(p.numel() for p in part.parameters())
            trainable = sum(p.numel() for p in part.parameters() if p.requires_grad)
            frozen = f" ({count - trainable:,} frozen)" if trainable != count else ""
            self.say(f"  {name:<45} {count:>12,}{frozen}")
        self.say(f"  {'total':<45} {total:>12,}")

    def report_forward_backward(self, batch: dict, step: int) -> ForwardCapture:
        self.section(f"one forward and backward at global step {step} (first batch)")
        model = self.fabric.to_device(self.model)
        model.train()
        batch = self.fabric.to_device(batch)
        captured = {}

        def capture(module, args, output):
            captured["gaussians"], captured["context"] = output, args[0]

        hook = model.encoder.register_forward_hook(capture)
        parts = model_parts(model)
        with PartProfiler(parts, self.fabric.device) as profiler, depth_logits_of(model.encoder) as depth_logits:
            output = model(batch, step)
            output.loss.backward()
        hook.remove()
        captured["depth_logits"] = depth_logits[0] if depth_logits else None
        with torch.no_grad():  # the targets once more with depth, for the picture (training renders colour only)
            shimmed = model.data_shim(batch)["target"]
            image_shape = tuple(shimmed["image"].shape[-2:])
            captured["rendered"] = model.render_views(captured["gaussians"], shimmed, image_shape, depth_mode="depth")
        self.say(f"  loss {output.loss.item():.6f}  " + "  ".join(
            f"{name} {float(value):.4g}" for name, value in sorted(output.logs.items()) if name != "loss/total"))
        memory = "GPU" if self.fabric.device.type == "cuda" else "CPU"
        self.say(f"  {'part':<45} {'forward ms':>11} {'backward ms':>12} {'forward peak MiB':>17}")
        for name, row in profiler.table().items():
            self.say(f"  {name:<45} {row['forward_ms']:>11.1f} {row['backward_ms']:>12.1f} "
                     f"{row['forward_peak'] / 2**20:>17.2f}")
        self.say(f"  whole forward and backward: {profiler.total_ms:.0f} ms under the profiler, peak {memory} memory "
                 f"{profiler.peak / 2**20:.1f} MiB above the start (forward peak: allocated during the part's forward, "
                 "above the level it started at)")
        self.section("gradient norms per model part (L2 over the part's parameters)")
        norms = gradient_norms(parts)
        for name in parts:
            if name in norms:
                self.say(f"  {name:<45} {float(norms[name].square().sum().sqrt()):.4g}")
            elif any(p.requires_grad for p in parts[name].parameters()):
                self.say(f"  {name:<45} no gradient (not used by the loss)")
                self.problems.append(f"model part {name} got no gradient: it does not contribute to the loss")
        bad = [name for name, values in norms.items() if not torch.isfinite(values).all()]
        if bad:
            self.problems.append(f"non-finite gradients in {bad}")
        model.zero_grad(set_to_none=True)
        return ForwardCapture(**captured)

    def report_plane_sweep(self, depth_logits: Tensor | None, context: dict) -> None:
        """Does the cost volume still match? Its softmax over the D depth candidates at every context pixel of the
        feature resolution (1/4 by default): one candidate the most probable nearly everywhere means the depth is
        a constant plus what the refinement U-Net makes of one image."""
        stride = self.cfg.model.encoder.downscale_factor
        self.section(f"plane sweep: the depth candidates' probabilities (first batch, 1/{stride} resolution)")
        if depth_logits is None:
            self.say("  not seen: the compiled encoder (model.compile=true) skips the hook that reads the depth head; "
                     "inspect with model.compile=false")
            return
        sweep = plane_sweep_statistics(depth_logits)
        count = sweep.probabilities.shape[1]
        disparities = disparity_candidates(context["near"][:1, :1], context["far"][:1, :1], count, torch.float32)
        depth = float(1 / disparities.flatten()[sweep.commonest])
        self.say("  most probable candidate's probability: " + quantiles(sweep.probabilities.amax(dim=1)))
        self.say(f"  entropy (nats; uniform over the {count} candidates: {math.log(count):.3g}): "
                 + quantiles(sweep.entropy))
        self.say(f"  {sweep.winners} of {count} candidates are the most probable somewhere; the commonest, "
                 f"candidate {sweep.commonest} (depth {depth:.3g}), at {percent(sweep.commonest_share)} of the pixels")
        if sweep.collapsed:
            self.problems.append(
                f"the plane sweep has collapsed: depth candidate {sweep.commonest} of {count} (depth {depth:.3g}) is "
                f"the most probable at {percent(sweep.commonest_share)} of the context pixels: the cost volume no "
                "longer decides the depth (docs/debugging.md, 'A plane sweep that no longer matches')")

    def report_gaussians(self, gaussians: Gaussians, context: dict) -> None:
        self.section("predicted Gaussians (first batch)")
        stats = gaussian_statistics(gaussians, context)
        depth, opacity, scale = stats["depth"], stats["opacity"], stats["scale"]
        self.say(f"  count {depth.numel():,} ({gaussians.means.shape[1]:,} per example)")
        self.say("  depth between near (0) and far (1), in disparity: " + quantiles(depth))
        self.say("  opacity: " + quantiles(opacity) + f"; below 0.01: {percent((opacity < 0.01).float().mean())}")
        self.say("  scale (largest axis, world units): " + quantiles(scale))
        at_near, at_far = plane_fractions(depth)
        self.say(f"  at the near plane: {percent(at_near)}, at the far plane: {percent(at_far)}")
        if max(at_near, at_far) > 0.95:
            plane = "near" if at_near > at_far else "far"
            self.problems.append(f"every Gaussian at one plane: {percent(max(at_near, at_far))} at the {plane} plane "
                                 "(the depth head has collapsed, or near/far are far off the scene's depths)")
        elif at_near + at_far > MOST:
            self.problems.append(f"near/far exclude most predicted depths: {percent(at_near)} of the Gaussians sit "
                                 f"at the near plane and {percent(at_far)} at the far plane (check dataset.near/far "
                                 "against the scene's scale)")
        if depth.numel() > 1 and float(depth.std()) < 1e-3:
            self.problems.append(f"every Gaussian at one depth (position {float(depth.mean()):.3f} between near "
                                 "and far)")

    # ---- the data ----------------------------------------------------------------------------------------
    def read_batches(self) -> tuple[list[dict], object]:
        cfg = self.cfg
        stream = TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)
        iterator = iter(stream)
        batches = [next(iterator) for _ in range(cfg.debug.inspect_batches)]
        return batches, stream

    def report_batch(self, number: int, batch: dict) -> None:
        self.section(f"training batch {number}: scenes {list(batch['scene'])}")
        for side in ("context", "target"):
            views = batch[side]
            image = views["image"]
            self.say(f"  {side}: image {list(image.shape)} {str(image.dtype).replace('torch.', '')} range "
                     f"[{image.min():.3f}, {image.max():.3f}], extrinsics {list(views['extrinsics'].shape)}, "
                     f"intrinsics {list(views['intrinsics'].shape)}")
            self.say(f"    near {unique_values(views['near'])}, far {unique_values(views['far'])}, "
                     f"frame indices {views['index'].tolist()}")
            k = views["intrinsics"]
            self.say(f"    fx {range_of(k[..., 0, 0])}, fy {range_of(k[..., 1, 1])}, cx {range_of(k[..., 0, 2])}, "
                     f"cy {range_of(k[..., 1, 2])} (normalised by the image size)")
            if image.min() < 0 or image.max() > 1:
                self.problems.append(f"batch {number} {side} images outside [0, 1]: [{image.min():.3f}, "
                                     f"{image.max():.3f}]")
            self.check_rotations(number, side, views["extrinsics"], batch["scene"])
        context, target = batch["context"], batch["target"]
        for example, scene in enumerate(batch["scene"]):
            origins = context["extrinsics"][example, :, :3, 3]
            targets = target["extrinsics"][example, :, :3, 3]
            baseline = float((origins[0] - origins[-1]).norm())
            gap = (context["index"][example, -1] - context["index"][example, 0]).item()
            self.say(f"  {scene}: context gap {gap} frames, baseline {baseline:.4g}; context at "
                     f"{positions(origins)}; targets at {positions(targets)}")
            if len(origins) >= 2 and baseline > 0:
                along, across = baseline_coordinates(origins[0], origins[-1], targets)
                outside = (along < -BASELINE_TOLERANCE) | (along > 1 + BASELINE_TOLERANCE)
                self.say(f"    targets along the baseline (0 = first context, 1 = last): "
                         f"{[round(v, 2) for v in along.tolist()]}, off it: "
                         f"{[round(v, 2) for v in across.tolist()]} baselines")
                if outside.any():
                    self.problems.append(
                        f"scene {scene}: {int(outside.sum())} of {len(along)} targets outside the context baseline "
                        f"(positions along it {[round(v, 2) for v in along[outside].tolist()]}; 0 and 1 are the "
                        "context cameras): the model interpolates between its context views")

    def check_rotations(self, number: int, side: str, extrinsics: Tensor, scenes: list[str]) -> None:
        determinant, off = rotation_defects(extrinsics[..., :3, :3])
        bad = (off > ROTATION_TOLERANCE) | ((determinant - 1).abs() > ROTATION_TOLERANCE)
        for example, view in bad.nonzero().tolist():
            self.problems.append(f"batch {number} scene {scenes[example]} {side} view {view}: the camera-to-world "
                                 f"rotation is not a rotation (det {determinant[example, view]:.3g}, max |R R^T - I| "
                                 f"{off[example, view]:.3g}{'; mirrored' if determinant[example, view] < 0 else ''})")

    def report_scene_cameras(self) -> None:
        """The cameras of the first training scenes, as stored: the data loader skips a scene whose cameras are
        not rotations (counted, with a warning), so its batches alone would never show them."""
        scenes = list_scenes(self.cfg.dataset, "train")[:SCENES_TO_SCAN]
        cache, bad = ChunkCache(), []
        for ref in scenes:
            try:
                problem = camera_problem(cache.scene(ref)["cameras"])
            except (SceneRejected, KeyError):
                continue  # unreadable: the stream's skip counts report it
            if problem is not None:
                bad.append(f"{ref.key}: {problem}")
        self.section(f"stored cameras of the first {len(scenes)} training scenes")
        self.say(f"  {len(scenes) - len(bad)} usable, {len(bad)} not rotations")
        for line in bad[:5]:
            self.say(f"  {line}")
        if bad:
            self.problems.append(f"{len(bad)} of {len(scenes)} training scenes have cameras that are not rotations "
                                 f"(the data loader skips them), e.g. {bad[0]}")

    def report_skips(self, stream) -> None:
        skips = getattr(stream, "skip_counts", {})
        if skips:
            self.say(f"  scenes the data loader skipped while reading these batches: {skips}")

    def read_validation_batch(self) -> dict | None:
        """The first validation batch (None where the dataset has no validation scenes): it carries ground-truth
        depth where the dataset has it (the synthetic one)."""
        try:
            return next(ValidationSource(self.cfg.dataset, self.cfg.data_loader.val, StepTracker(), self.cfg.seed))
        except DatasetError:
            return None

    def report_ground_truth_depth(self, batch: dict) -> None:
        """How much of the validation targets' ground-truth depth lies inside [near, far]."""
        target = batch["target"]
        if "depth" not in target:
            return
        depth = target["depth"].float()
        near, far = target["near"][..., None, None].float(), target["far"][..., None, None].float()
        known = depth > 0
        outside = ((depth < near) | (depth > far)) & known
        fraction = float(outside.sum() / known.sum().clamp_min(1))
        self.section(f"ground-truth depth (validation scene {batch['scene'][0]})")
        self.say(f"  depth {range_of(depth[known])}, near {unique_values(target['near'])}, far "
                 f"{unique_values(target['far'])}: {percent(fraction)} outside [near, far]")
        if fraction > MOST:
            self.problems.append(f"near/far exclude most ground-truth depths: {percent(fraction)} of the validation "
                                 f"scene's depths lie outside [near, far] = [{float(near.min()):.3g}, "
                                 f"{float(far.max()):.3g}] (depth {range_of(depth[known])}): set dataset.near/far "
                                 "to the scenes' scale")

    def report_sweep_reach(self, batch: dict) -> None:
        """How far a context pixel moves in the other context view, in the cost volume's feature pixels: between
        the near and far planes (the sweep's search range) and, with ground-truth depth, between the true depth
        / 1.25 and x 1.25; and what a plain colour plane sweep recovers from the same views."""
        encoder = self.cfg.model.encoder
        stride, count = encoder.downscale_factor, encoder.num_depth_candidates
        context = batch["context"]
        if context["image"].shape[1] < 2:
            return
        height, width = context["image"].shape[-2:]
        reach = sweep_reach(context, stride, count)
        self.section(f"how far the plane sweep can see (validation scene {batch['scene'][0]}, context frames "
                     f"{context['index'][0].tolist()}, in feature pixels at 1/{stride} of {height}x{width})")
        self.say("  a context pixel moves in the other view, between the near and far planes: " + quantiles(reach.reach))
        if reach.band is not None:
            self.say(f"  between its true depth / {DELTA} and x {DELTA}: " + quantiles(reach.band)
                     + f"; under one feature pixel at {percent((reach.band < 1).float().mean())} of the pixels")
            self.say(f"  a colour plane sweep ({COLOUR_WINDOW}x{COLOUR_WINDOW} windows, {count} candidates, "
                     f"winner-take-all at {height}x{width}, no learning) against the true depth: AbsRel "
                     f"{reach.colour_abs_rel:.3f}, delta<{DELTA} {reach.colour_delta:.3f}, where the other view "
                     f"sees the pixel at its true depth ({percent(reach.colour_seen)} of them)")
        median = float(reach.reach.median())
        if median < NARROW_REACH:
            self.problems.append(
                f"the context views barely move against each other: between the near ({unique_values(context['near'])}) "
                f"and far ({unique_values(context['far'])}) planes a context pixel moves a median {median:.2f} feature "
                f"pixels (1/{stride} resolution) in the other view, so the plane sweep cannot tell near from far: the "
                "cameras' baseline is small against dataset.near/far (check their scale, or widen the context gap)")


# ------------------------------------------------------------------------------------------------ helpers
def config_differences(config_yaml: str | None, cfg: RootCfg) -> list[str]:
    """`key: default -> value` for every leaf that differs from main.yaml composed without overrides."""
    run = yaml.safe_load(config_yaml) if config_yaml else dataclasses.asdict(cfg)
    defaults = flatten(default_config())
    current = flatten(run)
    lines = []
    for key in sorted(set(defaults) | set(current)):
        if key.startswith("hydra.") or defaults.get(key, "<absent>") == current.get(key, "<absent>"):
            continue
        lines.append(f"{key}: {defaults.get(key, '<absent>')!r} -> {current.get(key, '<absent>')!r}")
    return lines or ["(none)"]


def default_config() -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():  # inside the entry point: Hydra's own search path
        return OmegaConf.to_container(compose("main"), resolve=True)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return OmegaConf.to_container(compose("main"), resolve=True)


def flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def quantiles(values: Tensor) -> str:
    values = values.float().flatten()
    values = values[torch.isfinite(values)]
    if not values.numel():
        return "no finite values"
    q = torch.quantile(values[:: max(1, values.numel() // 100_000)], torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0]))
    return "min {:.4g}, 5% {:.4g}, median {:.4g}, 95% {:.4g}, max {:.4g}".format(*q.tolist())


def percent(value) -> str:
    return f"{100 * float(value):.1f}%"


def range_of(values: Tensor) -> str:
    return f"[{float(values.min()):.4g}, {float(values.max()):.4g}]" if values.numel() else "[]"


def unique_values(values: Tensor) -> str:
    unique = values.float().unique()
    return f"{float(unique[0]):.4g}" if unique.numel() == 1 else range_of(unique)


def positions(origins: Tensor) -> str:
    return ", ".join("(" + ", ".join(f"{v:.2f}" for v in origin.tolist()) + ")" for origin in origins)


def baseline_coordinates(first: Tensor, last: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """Points [N, 3] -> (position along first->last, 0..1 between them; distance off that line), in baselines."""
    axis = last - first
    length = axis.norm()
    along = ((points - first) @ axis) / length**2
    across = (points - first - along[:, None] * axis).norm(dim=-1) / length
    return along, across


class PartProfiler:
    """torch.profiler over one forward and backward; each part's forward is a named range (hooks), and backward
    operations are attributed to the part whose forward created them (autograd's sequence numbers)."""

    def __init__(self, parts: dict[str, nn.Module], device: torch.device) -> None:
        self.parts, self.device = parts, device
        self.ranges: dict[str, object] = {}
        self.hooks = []
        self.start = 0.0
        self.total_ms = 0.0

    def __enter__(self) -> "PartProfiler":
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        for name, part in self.parts.items():
            self.hooks.append(part.register_forward_pre_hook(self._enter(name)))
            self.hooks.append(part.register_forward_hook(self._exit(name)))
        self.profiler = torch.profiler.profile(activities=activities, profile_memory=True)
        self.profiler.__enter__()
        self.start = time.perf_counter()
        return self

    def _enter(self, name: str):
        def hook(module, args):
            self._synchronize()
            self.ranges[name] = torch.autograd.profiler.record_function(f"part::{name}")
            self.ranges[name].__enter__()
        return hook

    def _exit(self, name: str):
        def hook(module, args, output):
            self._synchronize()
            self.ranges.pop(name).__exit__(None, None, None)
        return hook

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __exit__(self, *exc) -> None:
        self._synchronize()
        self.total_ms = (time.perf_counter() - self.start) * 1000
        self.profiler.__exit__(*exc)
        for hook in self.hooks:
            hook.remove()

    def table(self) -> dict[str, dict[str, float]]:
        """Per part (and "not in a part"): forward ms, backward ms, peak bytes allocated during its forward."""
        cuda = self.device.type == "cuda"
        events = sorted(self.profiler.events(), key=lambda e: e.time_range.start)
        part_ranges = [(e.name[len("part::"):], e.time_range.start, e.time_range.end) for e in events
                       if e.name.startswith("part::")]

        def part_at(time_us: float) -> str:
            for name, start, end in part_ranges:
                if start <= time_us <= end:
                    return name
            return "not in a part"

        rows = {name: {"forward_ms": 0.0, "backward_ms": 0.0, "forward_peak": 0.0} for name in self.parts}
        rows["not in a part"] = {"forward_ms": math.nan, "backward_ms": 0.0, "forward_peak": math.nan}
        for name, start, end in part_ranges:
            event = next(e for e in events if e.name == f"part::{name}" and e.time_range.start == start)
            rows[name]["forward_ms"] += (end - start) / 1000 if not cuda else event.device_time_total / 1000
        # Forward operations (sequence number -> the part they ran in); backward ones carry the same number.
        part_of_sequence = {}
        backward = []
        for e in events:
            if e.name.startswith("autograd::engine::evaluate_function"):
                backward.append(e)
            elif e.sequence_nr >= 0 and e.sequence_nr not in part_of_sequence:
                part_of_sequence[e.sequence_nr] = part_at(e.time_range.start)
        for e in backward:
            part = part_of_sequence.get(e.sequence_nr, "not in a part")
            rows[part]["backward_ms"] += (e.device_time_total if cuda else e.time_range.elapsed_us()) / 1000
        # The allocation curve at operation granularity: each allocation is counted in the innermost operation.
        level, curve = 0.0, []
        for e in events:
            level += e.self_device_memory_usage if cuda else e.self_cpu_memory_usage
            curve.append((e.time_range.start, level))
        self.peak = max((value for _, value in curve), default=0.0) - (curve[0][1] if curve else 0.0)
        for name, start, end in part_ranges:
            inside = [value for t, value in curve if start <= t <= end]
            before = [value for t, value in curve if t < start]
            base = before[-1] if before else 0.0
            rows[name]["forward_peak"] = max(rows[name]["forward_peak"], max(inside, default=base) - base)
        return rows


# ------------------------------------------------------------------------------------------------ pictures
def save_camera_picture(batches: list[dict], path: Path, size: int = 360) -> None:
    """Top-down (x-z) and side (z-y) views of every batch's cameras: dots with a viewing-direction line,
    context cameras blue, targets orange; one scene per row."""
    rows = []
    for batch in batches:
        for example, scene in enumerate(batch["scene"]):
            cameras = [(batch["context"]["extrinsics"][example].float(), (40, 90, 220)),
                       (batch["target"]["extrinsics"][example].float(), (235, 130, 30))]
            panels = [camera_panel(cameras, axes, f"{scene}: {label}", size)
                      for axes, label in (((0, 2), "top (x right, z up)"), ((2, 1), "side (z right, y down)"))]
            rows.append(hcat(panels, gap=4))
    picture = vcat(rows, gap=4)
    save_image(picture, path)


def camera_panel(cameras: list[tuple[Tensor, tuple[int, int, int]]], axes: tuple[int, int], title: str,
                 size: int) -> Tensor:
    """cameras: (c2w [V, 4, 4], colour) groups -> a [3, size, size] panel projecting world axes `axes`."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    origins = torch.cat([c2w[:, :3, 3] for c2w, _ in cameras])[:, list(axes)]
    low, high = origins.min(0).values, origins.max(0).values
    extent = float((high - low).max().clamp_min(1e-6))
    centre = (low + high) / 2
    margin = 40
    scale = (size - 2 * margin) / extent
    arrow = 0.25 * extent

    def to_pixels(point: Tensor) -> tuple[float, float]:
        x = (float(point[0]) - float(centre[0])) * scale + size / 2
        y = (float(point[1]) - float(centre[1])) * scale + size / 2
        return x, size - y if axes[1] != 1 else y  # image y grows downwards; world y (OpenCV) already does

    for c2w, colour in cameras:
        for camera in c2w:
            origin = camera[:3, 3][list(axes)]
            forward = camera[:3, 2][list(axes)]
            x, y = to_pixels(origin)
            tip = to_pixels(origin + forward * arrow)
            draw.line([(x, y), tip], fill=colour, width=2)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    draw.text((4, 4), title, fill=(0, 0, 0))
    draw.text((4, size - 14), "blue: context  orange: target", fill=(0, 0, 0))
    return image_tensor(image)


def images_and_depth(batch: dict, gaussians: Gaussians, rendered) -> Tensor:
    """First example: context images over their predicted depth (from the Gaussians' z); target images over
    the rendered colour and depth."""
    context, target = batch["context"], batch["target"]
    views, _, height, width = context["image"][0].shape
    means = gaussians.means[0].detach().float().cpu()
    c2w = context["extrinsics"][0].float()
    per_view = means.reshape(views, -1, 3)
    near, far = float(context["near"][0, 0]), float(context["far"][0, 0])
    rows, labels = [], []
    context_images = context["image"][0].float()
    if per_view.shape[1] == height * width:  # one Gaussian per pixel at the shimmed size
        z = ((per_view - c2w[:, None, :3, 3]) * c2w[:, None, :3, 2]).sum(-1).reshape(views, height, width)
        depth = colorize_depth(z.clamp_min(1e-6), near, far)
        rows += [hcat(list(context_images)), hcat(list(depth))]
        labels += ["context", "predicted depth"]
    if rendered is not None:
        color = rendered.color[0].detach().float().cpu().clamp(0, 1)
        depth = colorize_depth(rendered.depth[0].detach().float().cpu().clamp_min(1e-6), near, far)
        rows += [hcat(list(target["image"][0].float())), hcat(list(color)), hcat(list(depth))]
        labels += ["target", "rendered", "rendered depth"]
    return vcat(label_rows(rows, labels))
