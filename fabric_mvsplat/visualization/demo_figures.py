"""Pictures of a finished run, from its own outputs: the demo figures of README.md and docs/demo.md.

    python -m fabric_mvsplat.visualization.demo_figures outputs/demo --test-dir outputs/test/demo --out docs

writes `<out>/demo_comparison.png` (one held-out scene as test mode saved it with test.save_image=true:
context | target | render | depth | true depth rows, labelled, with the depth colour bar),
`<out>/demo_training_curve.png` (training loss and validation PSNR against the step, read from the run's
TensorBoard event files) and, where the test scored depth, `<out>/demo_depth_by_true_depth.png` (depth AbsRel
and predicted / true per bin of true depth, from scores_all_avg.json). No plotting library: Pillow draws them.
"""

import argparse
import json
import math
import struct
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .layout import comparison_grid, image_tensor, text_image, vcat


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under `log_dir` -> {tag: [(step, value), ...]} sorted by step.

    Event files are TFRecords (length, its masked CRC, an `Event` protobuf, its CRC); tensorboardX ships the
    protobuf classes, so no TensorBoard install is needed. Truncated trailing records are ignored.
    """
    from tensorboardX.proto.event_pb2 import Event

    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {log_dir} (a run writes them to <output_dir>/tensorboard)")
    scalars: dict[str, dict[int, float]] = {}
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset: offset + 8])
            record = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            if len(record) < length:
                break
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_panel(series: list[tuple[list[tuple[int, float]], tuple[int, int, int], str]], title: str, size=(360, 240),
               log_y: bool = False, unjoined: frozenset[str] = frozenset()) -> Image.Image:
    """A line chart of (points, colour, legend) series with labelled axes; the series named in `unjoined` are
    dots only (values that are not one quantity over time, e.g. each validation on another scene)."""
    width, height = size
    left, right, top, bottom = 46, 10, 22, 30
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    points = [p for s, _, _ in series for p in s]
    transform = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    xs = [p[0] for p in points]
    ys = [transform(p[1]) for p in points]
    x_min, x_max = min(xs), max(max(xs), min(xs) + 1)
    y_min, y_max = min(ys), max(ys)
    pad = (y_max - y_min) * 0.05 or 0.5
    y_min, y_max = y_min - pad, y_max + pad

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_min) / (x_max - x_min) * (width - left - right)
        y = top + (1 - (transform(value) - y_min) / (y_max - y_min)) * (height - top - bottom)
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for i in range(5):  # y ticks
        fraction = i / 4
        raw = y_min + fraction * (y_max - y_min)
        label = f"{10 ** raw:.3g}" if log_y else f"{raw:.3g}"
        y = top + (1 - fraction) * (height - top - bottom)
        draw.line([left - 3, y, left, y], fill=(0, 0, 0))
        draw.text((2, y - 5), label, fill=(0, 0, 0), font=font)
    for i in range(5):  # x ticks
        step = x_min + i / 4 * (x_max - x_min)
        x = left + i / 4 * (width - left - right)
        draw.line([x, height - bottom, x, height - bottom + 3], fill=(0, 0, 0))
        draw.text((x - 10, height - bottom + 5), f"{step:.0f}", fill=(0, 0, 0), font=font)
    draw.text((width // 2 - 12, height - 12), "step", fill=(0, 0, 0), font=font)
    draw.text((left, 5), title, fill=(0, 0, 0), font=font)
    legend_x = width - right - 4
    for points_, colour, name in series:
        pixels = [to_pixel(step, value) for step, value in points_]
        if len(pixels) > 1 and name not in unjoined:
            draw.line(pixels, fill=colour, width=2)
        for x, y in pixels if len(pixels) <= 20 else []:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        text_width = font.getbbox(name)[2]
        draw.text((legend_x - text_width, top + 4 + 12 * series.index((points_, colour, name))), name,
                  fill=colour, font=font)
    return canvas


def side_by_side(panels: list[Image.Image]) -> Image.Image:
    """The panels left to right on one white canvas as high as the tallest."""
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width
    return canvas


def training_curve(scalars: dict[str, list[tuple[int, float]]]) -> Image.Image:
    """Left: training loss (raw and smoothed, log scale); right: validation PSNR and SSIM x 30."""
    loss = scalars.get("loss/total") or scalars.get("loss/mse")
    if not loss:
        raise ValueError(f"the event files hold no loss/total scalar (tags: {sorted(scalars)})")
    window = max(1, len(loss) // 30)
    smoothed = list(zip([s for s, _ in loss], _smooth([v for _, v in loss], window)))
    panels = [draw_panel([(loss, (190, 190, 230), "loss/total"), (smoothed, (20, 40, 160), f"mean of {window}")],
                         "training loss (log scale)", log_y=True)]
    psnr = scalars.get("val/psnr", [])
    train_psnr = scalars.get("train/psnr", [])
    if psnr or train_psnr:
        series = []
        if train_psnr:
            train_window = max(1, len(train_psnr) // 30)
            series.append((list(zip([s for s, _ in train_psnr], _smooth([v for _, v in train_psnr], train_window))),
                           (230, 120, 20), "train/psnr (mean)"))
        validation = "val/psnr (one scene each)"  # the validation source moves on: a new scene each time
        if psnr:
            series.append((psnr, (200, 30, 30), validation))
        panels.append(draw_panel(series, "PSNR (dB)", unjoined=frozenset({validation})))
    return side_by_side(panels)


def depth_by_true_depth_figure(rows: list[dict], size=(360, 252)) -> Image.Image:
    """test mode's depth_by_true_depth (scores_all_avg.json) as two bar charts over the bins of true depth: AbsRel
    (the share of the pixels under each bar), and the geometric mean of predicted / true against the line at 1
    (below: placed too near; above: too far)."""
    rows = [row for row in rows if row["abs_rel"] is not None]
    if not rows:
        raise ValueError("depth_by_true_depth has no scored bin")
    font = ImageFont.load_default()
    panels = []
    for key, title, colour, reference in (("abs_rel", "depth AbsRel by true depth", (200, 30, 30), None),
                                          ("ratio", "predicted / true depth (geometric mean)", (20, 40, 160), 1.0)):
        width, height = size
        left, right, top, bottom = 46, 10, 22, 52
        canvas = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((left, height - 12), "true depth (share of the scored pixels)", fill=(0, 0, 0), font=font)
        values = [row[key] for row in rows]
        y_max = max(values + [reference or 0.0]) * 1.15
        plot_height = height - top - bottom

        def to_y(value: float) -> float:
            return top + (1 - value / y_max) * plot_height

        draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
        for i in range(5):  # y ticks
            value = y_max * i / 4
            draw.line([left - 3, to_y(value), left, to_y(value)], fill=(0, 0, 0))
            draw.text((2, to_y(value) - 5), f"{value:.2g}", fill=(0, 0, 0), font=font)
        slot = (width - left - right) / len(rows)
        for i, row in enumerate(rows):
            x0, x1 = left + i * slot + slot * 0.15, left + (i + 1) * slot - slot * 0.15
            draw.rectangle([x0, to_y(row[key]), x1, to_y(0)], fill=colour)
            draw.text((x0, to_y(row[key]) - 12), f"{row[key]:.2f}", fill=(0, 0, 0), font=font)
            draw.text((x0 - 2, height - bottom + 4), f"{row['from']:.3g}-", fill=(0, 0, 0), font=font)
            draw.text((x0 - 2, height - bottom + 14), f"{row['to']:.3g}", fill=(0, 0, 0), font=font)
            draw.text((x0 - 2, height - bottom + 26), f"{100 * row['share']:.0f}%", fill=(110, 110, 110), font=font)
        if reference is not None:
            y = to_y(reference)
            for x in range(left, width - right, 8):  # dashed
                draw.line([x, y, min(x + 4, width - right), y], fill=(0, 0, 0))
        draw.text((left, 5), title, fill=(0, 0, 0), font=font)
        panels.append(canvas)
    return side_by_side(panels)


def _load(folder: Path) -> tuple[list[int], torch.Tensor | None]:
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        return [], None
    images = [image_tensor(Image.open(f)) for f in files]
    return [int(f.stem) for f in files], torch.stack(images)


def scene_figure(scene_dir: Path, near: float, far: float, caption: list[str] | None = None,
                 zoom: int | None = None) -> Image.Image:
    """The labelled comparison of one scene test mode saved (context/, ground_truth/, color/, depth/...);
    images are enlarged `zoom` times (default: to at least 96 px high) with nearest neighbour."""
    _, context = _load(scene_dir / "context")
    _, target = _load(scene_dir / "ground_truth")
    _, rendered = _load(scene_dir / "color")
    _, depth = _load(scene_dir / "depth")
    _, depth_truth = _load(scene_dir / "depth_ground_truth")
    if context is None or target is None or rendered is None:
        raise FileNotFoundError(f"{scene_dir} lacks context/, ground_truth/ or color/ PNGs: run test mode with "
                                "test.save_image=true (the default)")
    zoom = zoom if zoom is not None else max(1, math.ceil(96 / context.shape[-2]))
    if zoom > 1:  # nearest-neighbour: the pixels stay the model's pixels
        context, target, rendered, depth, depth_truth = (
            None if x is None else x.repeat_interleave(zoom, -1).repeat_interleave(zoom, -2)
            for x in (context, target, rendered, depth, depth_truth))
    grid = comparison_grid(context, target, rendered, depth, (near, far) if depth is not None else None, depth_truth)
    if caption:
        grid = vcat([text_image(caption, 14 * len(caption), grid.shape[-1]), grid], gap=2)
    return Image.fromarray((grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo figures (README.md, docs/demo.md) from a finished run's outputs.")
    parser.add_argument("run_dir", type=Path, help="the training run's output_dir (holds tensorboard/, config.yaml)")
    parser.add_argument("--test-dir", type=Path, default=None,
                        help="test mode's output folder for the run (default: test.output_path/<wandb.name> from the "
                             "run's config.yaml, as test mode with the run's experiment writes it)")
    parser.add_argument("--scene", default=None, help="scene key (default: the first scored scene)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the PNGs (default: RUN_DIR/figures, beside the run; the repository's "
                             "docs/ only when you pass --out docs)")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf

    config = OmegaConf.load(args.run_dir / "config.yaml")
    args.out = args.out if args.out is not None else args.run_dir / "figures"
    if args.test_dir is None:
        args.test_dir = Path(config.test.output_path) / config.wandb.name
    args.out.mkdir(parents=True, exist_ok=True)
    training_curve(read_scalars(args.run_dir / "tensorboard")).save(args.out / "demo_training_curve.png", optimize=True)

    near, far = float(config.dataset.near), float(config.dataset.far)
    per_scene_path = args.test_dir / "scores_per_scene.json"
    scores = json.loads(per_scene_path.read_text()) if per_scene_path.is_file() else []
    scene = args.scene or (scores[0]["scene"] if scores else None)
    if scene is None:
        scene = sorted(p.name for p in args.test_dir.iterdir() if (p / "color").is_dir())[0]
    caption = None
    entry = next((s for s in scores if s["scene"] == scene), None)
    if entry is not None:
        caption = [f"held-out scene {scene}",
                   f"PSNR {entry['psnr']:.1f} dB (nearest context {entry['psnr_nearest_context']:.1f})"]
        if entry.get("depth_abs_rel") is not None:
            caption.append(f"depth AbsRel {entry['depth_abs_rel']:.3f}")
    names_path = args.test_dir / "scene_file_names.json"  # test mode's folder name per scene key
    folder = json.loads(names_path.read_text()).get(scene, scene) if names_path.is_file() else scene
    written = [args.out / "demo_comparison.png", args.out / "demo_training_curve.png"]
    scene_figure(args.test_dir / folder, near, far, caption).save(written[0], optimize=True)
    averages_path = args.test_dir / "scores_all_avg.json"
    by_depth = json.loads(averages_path.read_text()).get("depth_by_true_depth") if averages_path.is_file() else None
    if by_depth:
        written.append(args.out / "demo_depth_by_true_depth.png")
        depth_by_true_depth_figure(by_depth).save(written[-1], optimize=True)
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
