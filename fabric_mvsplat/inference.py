"""A trained model on your own images, from Python: load a checkpoint, predict Gaussians, render any camera.

    from fabric_mvsplat.inference import load_model
    model = load_model("outputs/demo/checkpoints/epoch_21-step_1400.ckpt")     # its run's config.yaml beside
    prediction = model.predict(["a.png", "b.png"], extrinsics, intrinsics)     # c2w [V,4,4], K [V,3,3]
    out = model.render(prediction, extrinsics[:1], intrinsics[:1])             # color, depth, alpha
    prediction.save_ply("scene.ply")

Conventions (those of the chunk format and of test mode):
  * extrinsics: camera-to-world [V, 4, 4], OpenCV camera axes (+x right, +y down, +z forward), any world scale;
  * intrinsics: normalised [V, 3, 3], fx and cx divided by the image width, fy and cy by its height (pixel
    intrinsics: `normalize_intrinsics(K, width, height)`); a pixel's centre is at (col + 0.5, row + 0.5);
  * images of any size: resized to cover the model's `dataset.image_shape` and centre-cropped, intrinsics
    updated, exactly as test mode (both call `data.preprocess.preprocess_views`);
  * outputs in the caller's world units: the model sees camera centres divided by the context baseline
    (`dataset.make_baseline_1`) and near/far divided likewise; depth maps and the .ply are scaled back.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .config import RootCfg
from .data.chunk_io import camera_problem, cameras_to_vector
from .data.config import MAX_IMAGE_PIXELS
from .data.preprocess import Preprocessing, preprocess_views
from .data.view_sampler import SceneRejected
from .errors import CheckpointError, InputError
from .strict_load import FIX_SEPARATOR
from .model.mvsplat import MVSplat
from .types import Gaussians

DEFAULT_CHUNK_SIZE = 8  # frames per decoder call: memory stays that of 8 frames, whatever the video length
DEPTH_MODE = "expected_depth"  # what test mode renders when it saves depth: depth / alpha


@dataclass
class Rendered:
    """color [T, 3, H, W] in [0, 1] (unclamped), depth [T, H, W] in world units (expected depth: the
    alpha-normalised mean z), alpha [T, H, W] accumulated opacity; all on the CPU."""

    color: Tensor
    depth: Tensor
    alpha: Tensor


@dataclass
class Prediction:
    """The Gaussians of one scene and the views they came from.

    gaussians: batch of one, in model units (world units / scale), as the encoder returns them
    context / targets: batched views [1, V, ...] after preprocessing and the encoder's crop (model units);
    targets are the images given besides the context ones (rendered by `InferenceModel.render_targets`)
    scale: world units per model unit (the context baseline under dataset.make_baseline_1, else 1)
    names: the context views' names, then the targets'
    """

    gaussians: Gaussians
    context: dict
    targets: dict
    scale: float
    names: list[str]
    target_names: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.context["image"].shape[-2:])

    def context_cameras(self) -> tuple[Tensor, Tensor]:
        """The context cameras in world units: c2w [V, 4, 4], normalised K [V, 3, 3] of the rendered image."""
        return to_world(self.context["extrinsics"][0], self.scale), self.context["intrinsics"][0].clone()

    def world_gaussians(self) -> Gaussians:
        """The Gaussians in world units (means x scale, covariances x scale^2), on the CPU."""
        g = self.gaussians
        return Gaussians(g.means.detach().cpu().double().mul(self.scale).float(),
                         g.covariances.detach().cpu().double().mul(self.scale ** 2).float(),
                         g.harmonics.detach().cpu().float(), g.opacities.detach().cpu().float())

    def save_ply(self, path: str | Path) -> None:
        """A standard 3DGS .ply in world units (see model.ply_export)."""
        from .model.ply_export import export_ply

        export_ply(self.world_gaussians(), path)


def to_world(extrinsics: Tensor, scale: float) -> Tensor:
    world = extrinsics.detach().cpu().clone()
    world[..., :3, 3] *= scale
    return world


def normalize_intrinsics(intrinsics: Tensor | np.ndarray, width: int, height: int) -> Tensor:
    """Pixel K [..., 3, 3] (fx, fy, cx, cy in pixels) -> normalised K (fx, cx / width; fy, cy / height)."""
    k = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32).clone()
    k[..., 0, :] /= width
    k[..., 1, :] /= height
    return k


def open_rgb_image(image: "str | Path | Image.Image", name: str) -> Image.Image:
    """A fully decoded RGB image, or InputError naming the file: unreadable, truncated or not RGB."""
    if isinstance(image, Image.Image):
        opened = image
    else:
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image {path} does not exist: check the path (names are relative to the images "
                             "folder or the cameras JSON)")
        try:
            opened = Image.open(path)  # reads the header only: the pixel budget is checked before decoding
            too_large = opened.width * opened.height > MAX_IMAGE_PIXELS
            if not too_large:
                opened.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise InputError(f"image {path} cannot be read ({type(error).__name__}: {error}): replace it with "
                             "a JPEG or PNG file") from None
        if too_large:
            raise InputError(f"image {path} is {opened.width}x{opened.height}, above the budget of "
                             f"{MAX_IMAGE_PIXELS:,} pixels: downscale it first (the model sees a few hundred pixels "
                             "a side)")
    if opened.mode != "RGB":
        raise InputError(f"image {name} is {opened.mode!r}, not RGB: convert it to 8-bit RGB (e.g. PIL: "
                         "Image.open(path).convert('RGB').save(path))")
    return opened


def check_cameras(extrinsics: Tensor, intrinsics: Tensor, names: Sequence[str]) -> None:
    """InputError naming the view whose camera has NaN/inf values, a non-rotation or a focal length <= 0."""
    if extrinsics.ndim != 3 or extrinsics.shape[1:] != (4, 4) or intrinsics.shape != (extrinsics.shape[0], 3, 3):
        raise InputError(f"cameras must be extrinsics [V, 4, 4] and intrinsics [V, 3, 3], got "
                         f"{list(extrinsics.shape)} and {list(intrinsics.shape)}")
    if len(names) != extrinsics.shape[0]:
        raise InputError(f"{len(names)} images but {extrinsics.shape[0]} cameras: give one camera per image")
    finite = torch.isfinite(extrinsics).flatten(1).all(1) & torch.isfinite(intrinsics).flatten(1).all(1)
    if not finite.all():
        view = int((~finite).nonzero()[0])
        raise InputError(f"the camera of {names[view]} has non-finite values (NaN or inf): fix its pose/intrinsics")
    last_row_error = (extrinsics[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=extrinsics.dtype)).abs().amax(1)
    if (last_row_error > 1e-6).any():
        view = int(last_row_error.argmax())
        raise InputError(f"the camera-to-world matrix of {names[view]} has last row {extrinsics[view, 3].tolist()}, "
                         "expected [0, 0, 0, 1]")
    world_to_camera = torch.linalg.inv(extrinsics.double())
    problem = camera_problem(cameras_to_vector(world_to_camera, intrinsics.double()))
    if problem is not None:  # "view i ...": name the file instead
        view = int(re.match(r"view (\d+)", problem).group(1))
        raise InputError(f"the camera of {names[view]}: {problem}: give camera-to-world "
                         "matrices whose 3x3 block is a rotation (OpenCV axes) and normalised intrinsics with fx, fy > 0")


class InferenceModel:
    """A trained MVSplat in eval mode on one device, with the config it was trained with."""

    def __init__(self, model: MVSplat, cfg: RootCfg, device: torch.device, fabric) -> None:
        self.model, self.cfg, self.device, self.fabric = model, cfg, device, fabric
        self.preprocessing = Preprocessing.from_cfg(cfg.dataset)

    @property
    def num_context_views(self) -> int:
        return int(getattr(self.cfg.dataset.view_sampler, "num_context_views", 2))

    # ---- Gaussians -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Sequence["str | Path | Image.Image"], extrinsics: Tensor, intrinsics: Tensor, *,
                context: Sequence[int] | None = None, names: Sequence[str] | None = None) -> Prediction:
        """Gaussians from the `context` images (default: all, at least two); the other images become targets.

        images: paths or PIL images (RGB, any size); extrinsics c2w [N, 4, 4]; intrinsics normalised [N, 3, 3]
        for the images as they are.
        """
        names = list(names) if names is not None else [
            Path(i).name if isinstance(i, (str, Path)) else f"view_{n}" for n, i in enumerate(images)]
        extrinsics = torch.as_tensor(np.asarray(extrinsics), dtype=torch.float32)
        intrinsics = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
        context = list(range(len(images))) if context is None else [int(i) for i in context]
        if len(set(context)) < 2:
            raise InputError(f"{len(set(context))} context image(s) given: the cost volume needs at least two "
                             "images of the same scene with their cameras")
        check_cameras(extrinsics, intrinsics, names)
        frames = {i: open_rgb_image(image, names[i]) for i, image in enumerate(images)}
        targets = [i for i in range(len(images)) if i not in context]
        return self.predict_frames(frames, extrinsics, intrinsics, context, targets, names)

    @torch.no_grad()
    def predict_frames(self, frames: dict[int, Image.Image], extrinsics: Tensor, intrinsics: Tensor,
                       context: Sequence[int], targets: Sequence[int], names: Sequence[str],
                       key: str = "scene") -> Prediction:
        """The checked inputs -> Prediction, through test mode's preprocessing, shim and encoder call."""
        try:
            prepared = preprocess_views(frames, extrinsics, intrinsics, torch.tensor(list(context), dtype=torch.int64),
                                        torch.tensor(list(targets), dtype=torch.int64), self.preprocessing, key=key)
        except SceneRejected as error:
            raise InputError(f"the context cameras {[names[i] for i in context]} (almost) coincide ({error}): pick "
                             "two views taken from different places") from None
        batch = {"context": {k: v[None] for k, v in prepared.context.items()},
                 "target": {k: v[None] for k, v in prepared.target.items()}, "scene": [key]}
        batch = self.model.data_shim(self.fabric.to_device(batch))
        with self.fabric.autocast():  # trainer.precision, as test mode; the decoder renders in fp32
            gaussians = self.model.encode(batch["context"], global_step=0)
        return Prediction(gaussians, batch["context"], batch["target"], prepared.scale,
                          [names[i] for i in context], [names[i] for i in targets])

    # ---- rendering -----------------------------------------------------------------------------
    def render(self, prediction: Prediction, extrinsics: Tensor, intrinsics: Tensor, *,
               chunk_size: int = DEFAULT_CHUNK_SIZE, image_shape: tuple[int, int] | None = None) -> Rendered:
        """Any cameras (c2w [T, 4, 4] world units, K [T, 3, 3] normalised) at `image_shape` (H, W; default the
        model's, prediction.image_shape: normalised intrinsics keep the field of view at any size)."""
        return concatenate(self.render_chunks(prediction, extrinsics, intrinsics, chunk_size=chunk_size,
                                              image_shape=image_shape))

    def render_chunks(self, prediction: Prediction, extrinsics: Tensor, intrinsics: Tensor, *,
                      chunk_size: int = DEFAULT_CHUNK_SIZE,
                      image_shape: tuple[int, int] | None = None) -> Iterator[Rendered]:
        """As `render`, `chunk_size` cameras at a time: what a long video holds in memory is one chunk."""
        extrinsics = torch.as_tensor(np.asarray(extrinsics), dtype=torch.float32).clone()
        intrinsics = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
        extrinsics[:, :3, 3] /= prediction.scale  # the model's units, as preprocess_views scales cameras
        context = prediction.context
        near, far = context["near"][:, :1], context["far"][:, :1]
        for start in range(0, extrinsics.shape[0], chunk_size):
            count = min(chunk_size, extrinsics.shape[0] - start)
            views = {"extrinsics": extrinsics[None, start:start + count], "intrinsics": intrinsics[None, start:start + count],
                     "near": near.cpu().expand(1, count), "far": far.cpu().expand(1, count)}
            yield self._render_views(prediction, views, image_shape)

    def render_targets(self, prediction: Prediction, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Rendered:
        """The target images' cameras, preprocessed as test mode's targets (and rendered as test mode)."""
        targets = prediction.targets
        parts = []
        for start in range(0, targets["extrinsics"].shape[1], chunk_size):
            views = {k: targets[k][:, start:start + chunk_size] for k in ("extrinsics", "intrinsics", "near", "far")}
            parts.append(self._render_views(prediction, views))
        return concatenate(parts)

    @torch.no_grad()
    def _render_views(self, prediction: Prediction, views: dict, image_shape: tuple[int, int] | None = None) -> Rendered:
        views = self.fabric.to_device(views)
        output = self.model.render_views(prediction.gaussians, views, image_shape or prediction.image_shape,
                                         depth_mode=DEPTH_MODE)
        return Rendered(output.color[0].float().cpu(), output.depth[0].float().cpu() * prediction.scale,
                        output.alpha[0].float().cpu())


def concatenate(parts: "Iterator[Rendered] | list[Rendered]") -> Rendered:
    parts = list(parts)
    if not parts:
        raise InputError("no cameras to render: give at least one camera")
    return Rendered(*(torch.cat([getattr(p, name) for p in parts]) for name in ("color", "depth", "alpha")))


# ---- loading -------------------------------------------------------------------------------------
def find_config(checkpoint: Path) -> Path:
    """The run's config.yaml: training writes it into output_dir, the checkpoints into output_dir/checkpoints."""
    for candidate in (checkpoint.parent / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise InputError(f"no config.yaml beside {checkpoint} or in its parent folder: pass the training run's "
                     "config with --config PATH (config= in Python); training writes it into output_dir")


def read_run_config(path: Path) -> RootCfg:
    """A training run's config.yaml -> RootCfg (test mode settings: no losses, this checkpoint)."""
    from omegaconf import OmegaConf

    from .config import load_config
    from .errors import ConfigError

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # YAML syntax, unreadable file
        raise InputError(f"config {path} cannot be read ({type(error).__name__}: {error}): pass the config.yaml "
                         "a training run wrote") from None
    if not isinstance(raw, dict) or "model" not in raw or "dataset" not in raw:
        raise InputError(f"config {path} has no model/dataset sections: pass the config.yaml a training run wrote")
    try:
        return load_config(raw)
    except ConfigError as error:
        raise InputError(f"config {path}: {error}") from None


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but CUDA is not available: use device cpu (or auto)")
    return device


def precision_for(cfg: RootCfg, device: torch.device) -> str:
    """The trained precision (test mode's autocast); fp16 autocast exists only on CUDA, so 32-true on a CPU."""
    precision = str(cfg.trainer.precision)
    if device.type != "cuda" and precision in ("16-mixed", "16-true", "16"):
        return "32-true"
    return precision


def load_model(checkpoint: str | Path, config: str | Path | None = None,
               device: str | torch.device | None = "auto") -> InferenceModel:
    """A checkpoint (weights_only load, strict) + its run's config (default: config.yaml beside it, or one folder
    up) -> InferenceModel on `device` ('auto': CUDA when available)."""
    from lightning_fabric import Fabric

    from .checkpoint import load_weights
    from .model.mvsplat import build_model

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"checkpoint {checkpoint} does not exist: pass a .ckpt file a training run wrote "
                         "(output_dir/checkpoints/*.ckpt)")
    config_path = Path(config) if config is not None else find_config(checkpoint)
    if not config_path.is_file():
        raise InputError(f"config {config_path} does not exist: pass the config.yaml of the run that trained "
                         f"{checkpoint}")
    cfg = read_run_config(config_path)
    device = pick_device(device)
    if cfg.model.decoder.backend == "gsplat" and device.type != "cuda":
        cfg.model.decoder.backend = "auto"  # gsplat renders only on CUDA; the PyTorch rasterizer elsewhere
    model = build_model(cfg.model, None, background_color=cfg.dataset.background_color)
    try:
        load_weights(model, checkpoint, cfg.checkpointing.allow_unsafe_load)
    except CheckpointError as error:
        what, separator, _ = str(error).rpartition(f"; {FIX_SEPARATOR}")
        if not separator:  # not a mismatch of weights: the file itself is the problem
            raise InputError(str(error)) from None
        summary = "; ".join(part[:300] for part in what.split("; "))
        raise InputError(f"{summary}; fix: pass the config.yaml of the run that trained this checkpoint with "
                         f"--config (config= in Python), not {config_path}") from None
    fabric = Fabric(accelerator=device.type, devices=[device.index or 0] if device.type == "cuda" else 1,
                    precision=precision_for(cfg, device))
    model = fabric.to_device(model).eval()
    return InferenceModel(model, cfg, fabric.device, fabric)
