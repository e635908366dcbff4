"""LPIPS (VGG16, v0.1 linear heads) without the `lpips` package and without downloads.

The network reproduces `lpips.LPIPS(net="vgg")`: scaling layer, VGG16 features tapped after
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, per-pixel channel normalisation, squared
difference, a non-negative 1x1 "linear" head per tap, spatial mean, sum over taps.

Every weight is a non-persistent buffer (like the original's ``convert_to_buffer``), so the
net is frozen, never optimised and never part of a checkpoint. The buffer names follow the
torchvision / lpips files (``features.N.weight``, ``lin{k}.model.1.weight``) so loading is a
plain name-by-name copy.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import safe_load
from ..errors import MissingWeightsError, WeightsError

# (output channels | "M" for a 2x2 max-pool) of torchvision's vgg16 `features`, truncated
# after relu5_3 (index 29): the last pool is never used by LPIPS.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAP_INDICES = (3, 8, 15, 22, 29)  # features.N after which LPIPS reads the activations
TAP_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
MIN_IMAGE_SIZE = 16  # four 2x2 pools happen before relu5_3

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"


class FrozenConv2d(nn.Module):
    """A conv whose weight and bias are non-persistent buffers (frozen, not checkpointed)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        weight = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


def vgg16_features() -> nn.Sequential:
    """torchvision's vgg16 `features` up to relu5_3, same indices, frozen convs."""
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in VGG16_LAYOUT:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [FrozenConv2d(in_channels, entry, 3, bias=True), nn.ReLU()]
            in_channels = entry
    return nn.Sequential(*layers)


class LinearHead(nn.Module):
    """lpips `NetLinLayer` layout: model.0 is a dropout (identity here), model.1 a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # The original's dropout is only active if the loss module is left in train mode;
        # we keep LPIPS deterministic (expectation unchanged).
        self.model = nn.Sequential(nn.Identity(), FrozenConv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def normalize_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """[B, C, H, W] -> unit L2 norm over C at every pixel (lpips `normalize_tensor`)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG distance: forward(pred [B,3,H,W], gt [B,3,H,W]) -> [B]. Load via load_lpips."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        for k, channels in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{k}", LinearHead(channels))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.is_loaded = False

    def heads(self) -> list[LinearHead]:
        return [getattr(self, f"lin{k}") for k in range(len(TAP_CHANNELS))]

    def copy_buffers(self, prefix: str, state: dict[str, Tensor]) -> None:
        """Fill every buffer named `prefix*` from `state`; extra keys (e.g. torchvision's
        classifier) are ignored, a missing key or wrong shape raises ValueError naming it."""
        for name, buffer in self.named_buffers():
            if not name.startswith(prefix):
                continue
            if name not in state:
                raise ValueError(f"tensor '{name}' is missing")
            value = state[name]
            if tuple(value.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"tensor '{name}' has shape {tuple(value.shape)}, expected {tuple(buffer.shape)}"
                )
            buffer.copy_(value.to(buffer.dtype))

    def tap_features(self, x: Tensor) -> list[Tensor]:
        """[B, 3, H, W] scaled input -> the five VGG activations LPIPS compares."""
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(x)
        return taps

    def forward(self, pred: Tensor, gt: Tensor, normalize: bool = True) -> Tensor:
        """pred, gt: [B, 3, H, W] in [0, 1] (normalize=True) or [-1, 1] -> [B] distances."""
        if not self.is_loaded:
            raise RuntimeError("LPIPS weights are not loaded: build the module with load_lpips()")
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two [B, 3, H, W] images of the same shape, got "
                f"{tuple(pred.shape)} and {tuple(gt.shape)}"
            )
        if min(pred.shape[-2:]) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"LPIPS-VGG needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, "
                f"got {tuple(pred.shape[-2:])}"
            )
        if normalize:
            pred, gt = 2 * pred - 1, 2 * gt - 1
        batch = pred.shape[0]
        both = torch.cat([pred, gt]).to(self.shift.dtype)
        taps = self.tap_features((both - self.shift) / self.scale)
        distance = 0
        for tap, head in zip(taps, self.heads()):
            a, b = normalize_channels(tap[:batch]), normalize_channels(tap[batch:])
            distance = distance + head((a - b) ** 2).mean(dim=(1, 2, 3))
        return distance


def _find_vgg16_file(weights_dir: Path) -> Path | None:
    exact = weights_dir / "vgg16.pth"
    if exact.is_file():
        return exact
    matches = sorted(weights_dir.glob("vgg16*.pth"))
    return matches[0] if matches else None


def _missing_weights_error(path: Path, what: str, url: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"LPIPS weight file not found: {path} ({what}). Put it in the directory given by "
        f"loss.lpips.weights (training; test mode uses it too) or test.lpips_weights (testing, taken first); "
        f"download it from "
        f"{url} (no download happens here)."
    )


def _load_state(path: Path) -> dict[str, Tensor]:
    try:
        state = safe_load.load(path, "LPIPS weight file")
    except safe_load.FileLoadError as error:  # unreadable, or pickled with arbitrary objects
        raise ValueError(str(error)) from error
    if not isinstance(state, dict):
        raise ValueError(f"LPIPS weight file {path} must hold a state_dict (a dict of tensors), got {type(state)}")
    return state


def find_weight_files(weights_dir: str | Path | None) -> tuple[Path, Path]:
    """(vgg16*.pth, vgg.pth) in `weights_dir`, or MissingWeightsError naming the file, the config keys and
    where to download it. Config validation calls this at start-up; `load_lpips` again when it loads."""
    if weights_dir is None:
        raise MissingWeightsError(
            "no LPIPS weights directory given: set loss.lpips.weights (training; test mode uses it too) or "
            f"test.lpips_weights (testing, taken first) to a directory holding vgg16.pth ({VGG16_URL}) "
            f"and vgg.pth (the lpips repo's lpips/weights/v0.1/vgg.pth, {LIN_URL})"
        )
    weights_dir = Path(weights_dir).expanduser()
    vgg_path = _find_vgg16_file(weights_dir)
    if vgg_path is None:
        raise _missing_weights_error(
            weights_dir / "vgg16.pth", "torchvision vgg16 state_dict, any vgg16*.pth", VGG16_URL
        )
    lin_path = weights_dir / "vgg.pth"
    if not lin_path.is_file():
        raise _missing_weights_error(
            lin_path, "lpips v0.1 linear heads, the lpips repo's lpips/weights/v0.1/vgg.pth", LIN_URL
        )
    return vgg_path, lin_path


def load_lpips(weights_dir: str | Path, device: torch.device | str | None = None) -> LPIPS:
    """LPIPS-VGG from `weights_dir`: vgg16*.pth (torchvision) and vgg.pth (lpips v0.1 heads)."""
    vgg_path, lin_path = find_weight_files(weights_dir)
    model = LPIPS()
    for prefix, path in (("features.", vgg_path), ("lin", lin_path)):
        state = _load_state(path)
        try:
            model.copy_buffers(prefix, state)
        except ValueError as error:
            raise WeightsError(f"bad LPIPS weight file {path}: {error}") from error
    model.is_loaded = True
    return model.to(device).eval()

