"""Image grids and colour maps for TensorBoard and saved videos (plain torch, no plotting library;
text is drawn with Pillow's built-in bitmap font)."""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

# A perceptually ordered dark-blue -> cyan -> green -> yellow -> red ramp (our own stops),
# close enough to "turbo" for reading depth maps at a glance.
_DEPTH_STOPS = torch.tensor(
    [
        [0.19, 0.07, 0.23],
        [0.16, 0.47, 0.93],
        [0.10, 0.85, 0.75],
        [0.55, 0.98, 0.25],
        [0.98, 0.73, 0.20],
        [0.80, 0.20, 0.05],
        [0.48, 0.02, 0.01],
    ]
)


def apply_color_map(values: Tensor) -> Tensor:
    """values [...] in [0, 1] -> RGB [..., 3, H, W]-compatible [..., 3] colours."""
    stops = _DEPTH_STOPS.to(values.device, values.dtype)
    position = values.clamp(0, 1) * (len(stops) - 1)
    lower = position.floor().long().clamp(max=len(stops) - 2)
    fraction = (position - lower)[..., None]
    return stops[lower] * (1 - fraction) + stops[lower + 1] * fraction


def colorize_depth(depth: Tensor, near: Tensor | float, far: Tensor | float) -> Tensor:
    """depth [..., H, W] (positive) -> [..., 3, H, W], log-scaled between near and far."""
    near_t = torch.as_tensor(near, dtype=depth.dtype, device=depth.device)
    far_t = torch.as_tensor(far, dtype=depth.dtype, device=depth.device)
    log_near, log_far = near_t.log(), far_t.log()
    normalized = (depth.clamp_min(1e-6).log() - log_near) / (log_far - log_near)
    return apply_color_map(normalized).movedim(-1, -3)


def hcat(images: list[Tensor], gap: int = 2, fill: float = 1.0) -> Tensor:
    """[3, H_i, W_i] images side by side, top-aligned, separated by `gap` columns of `fill`."""
    height = max(image.shape[-2] for image in images)
    parts = []
    for i, image in enumerate(images):
        padded = torch.full((3, height, image.shape[-1]), fill, dtype=image.dtype, device=image.device)
        padded[:, : image.shape[-2]] = image
        parts.append(padded)
        if i < len(images) - 1:
            parts.append(torch.full((3, height, gap), fill, dtype=image.dtype, device=image.device))
    return torch.cat(parts, dim=-1)


def vcat(images: list[Tensor], gap: int = 2, fill: float = 1.0) -> Tensor:
    """[3, H_i, W_i] images stacked vertically, left-aligned."""
    return hcat([image.transpose(-1, -2) for image in images], gap, fill).transpose(-1, -2)


def image_tensor(image: Image.Image) -> Tensor:
    """A Pillow image -> [3, H, W] float32 in [0, 1] (grey images repeated over the three channels)."""
    values = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
    return values.permute(2, 0, 1).contiguous()


def text_image(lines: list[str], height: int, width: int | None = None, align: str = "left") -> Tensor:
    """Black text on white, [3, height, width] in [0, 1]; lines spread evenly over the height (one line:
    centred; several: the first at the top and the last at the bottom, as on a scale)."""
    font = ImageFont.load_default()
    sizes = [font.getbbox(line) for line in lines]
    text_width = max((right for _, _, right, _ in sizes), default=0)
    line_height = max((bottom for _, _, _, bottom in sizes), default=0)
    width = width if width is not None else text_width + 6
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        if len(lines) == 1:
            y = (height - line_height) // 2
        else:
            y = round(i * (height - line_height) / (len(lines) - 1))
        x = 3 if align == "left" else max(0, width - font.getbbox(line)[2] - 3)
        draw.text((x, y), line, fill=0, font=font)
    return image_tensor(canvas)


def depth_colour_bar(height: int, near: float, far: float, width: int = 10) -> Tensor:
    """The depth colours of `colorize_depth` from near (top) to far (bottom), labelled with the depths at
    the top, middle (geometric mean: the scale is logarithmic) and bottom. -> [3, height, W]."""
    ramp = apply_color_map(torch.linspace(0, 1, height))  # [height, 3]
    bar = ramp.T[:, :, None].expand(3, height, width)
    labels = [f"{near:.3g}", f"{(near * far) ** 0.5:.3g}", f"{far:.3g}"]
    return hcat([bar, text_image(labels, height)], gap=2)


def label_rows(rows: list[Tensor], labels: list[str]) -> list[Tensor]:
    """Prefix each [3, H, W] row with its label, all labels in one column of the same width."""
    font = ImageFont.load_default()
    width = max(font.getbbox(label)[2] for label in labels) + 6
    return [hcat([text_image([label], row.shape[-2], width), row.cpu().float()], gap=2)
            for row, label in zip(rows, labels)]


def comparison_grid(context: Tensor, target: Tensor, rendered: Tensor, depth: Tensor | None = None,
                    depth_range: tuple[float, float] | None = None, depth_truth: Tensor | None = None) -> Tensor:
    """Labelled rows: contexts [Vc,3,H,W] | ground-truth targets [Vt,3,H,W] | renders | depth [Vt,3,H,W]
    (already coloured) with a colour bar when `depth_range` = (near, far) is given | ground-truth depth."""
    rows = [hcat(list(context)), hcat(list(target)), hcat(list(rendered.clamp(0, 1)))]
    labels = ["context", "target", "render"]
    for name, images in (("depth", depth), ("true depth", depth_truth)):
        if images is not None:
            rows.append(hcat(list(images)))
            labels.append(name)
    rows = [row.cpu().float() for row in rows]
    if depth is not None and depth_range is not None:
        depth_row = labels.index("depth")
        rows[depth_row] = hcat([rows[depth_row], depth_colour_bar(rows[depth_row].shape[-2], *depth_range)], gap=4)
    return vcat(label_rows(rows, labels), gap=4)
