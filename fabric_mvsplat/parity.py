"""Check the encoder against tensors produced by the original MVSplat code.

    python -m fabric_mvsplat.parity DIR [DIR...] [--intermediates]

A DIR is either an encoder folder (config.json, state_dict.pt, inputs.pt, outputs.pt, optionally
outputs_avx2.pt and, for --intermediates, intermediates.pt) or a GaussianAdapter folder (meta.json plus its *_inputs.pt,
*_outputs.pt, *_helpers.pt, rotate_sh.pt, sample_image_grid.pt, map_pdf_to_opacity.pt).

Pass criterion (from the golden README):
  * outputs: torch.allclose(ours, golden, rtol=1e-3, atol=1e-4), i.e. every element satisfies
    |ours - golden| <= 1e-4 + 1e-3 * |golden|. The relative term matters for means and depths,
    which come from 1/disparity and so amplify float rounding at large depth;
  * intermediates: max |ours - golden| <= 1e-4 * max |golden| (per tensor);
  * SH rotations with a total rotation angle below 1e-3 rad use atol 1e-3: there the original's
    float32 acos collapses tiny tilts (README, rotate_sh case 4).
Golden file per CPU: the float rounding of the convolutions depends on the vector instructions their
kernels use (oneDNN picks them by the CPU, like ATen's `torch.backends.cpu.get_cpu_capability()`), and
1/disparity amplifies it past the tolerance in means and covariances. Final outputs are therefore compared
with `outputs_avx2.pt` when the convolutions run AVX2 code (an AVX2-only CPU, or ONEDNN_MAX_CPU_ISA=AVX2)
and with `outputs.pt` otherwise; the tolerance is the same for both. The first line of each folder's table
names the file and the kernels.
Columns: "max abs" = max |ours - golden|; "max rel" = max abs / max |golden|; "worst" = the
largest ratio of the error to its allowance (<= 1 passes). Exit status 1 when anything fails.
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import safe_load

RTOL, ATOL = 1e-3, 1e-4
INTERMEDIATE_RTOL = 1e-4


@dataclass
class Row:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    worst: float

    @property
    def ok(self) -> bool:
        return self.worst <= 1.0


def compare_outputs(name: str, ours: Tensor, golden: Tensor, rtol: float = RTOL, atol: float = ATOL) -> Row:
    ours, golden = ours.detach().double().cpu(), golden.detach().double().cpu()
    if ours.shape != golden.shape:
        return Row(f"{name} (shape {list(ours.shape)} vs golden {list(golden.shape)})", tuple(golden.shape),
                   math.inf, math.inf, math.inf)
    err = (ours - golden).abs()
    scale = golden.abs().max().item() if golden.numel() else 0.0
    max_abs = err.max().item() if err.numel() else 0.0
    worst = (err / (atol + rtol * golden.abs())).max().item() if err.numel() else 0.0
    return Row(name, tuple(golden.shape), max_abs, max_abs / scale if scale else max_abs, worst)


def compare_intermediate(name: str, ours: Tensor, golden: Tensor) -> Row:
    ours, golden = ours.detach().double().cpu(), golden.detach().double().cpu()
    if ours.shape != golden.shape:
        return Row(f"{name} (shape {list(ours.shape)} vs golden {list(golden.shape)})", tuple(golden.shape),
                   math.inf, math.inf, math.inf)
    max_abs = (ours - golden).abs().max().item()
    scale = golden.abs().max().item()
    allowance = INTERMEDIATE_RTOL * scale if scale else 1e-12
    return Row(name, tuple(golden.shape), max_abs, max_abs / scale if scale else max_abs, max_abs / allowance)


def load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"parity folder {path.parent} has no {path.name}; see ../shared/golden/README.md")
    try:
        return safe_load.load(path, "golden file")
    except safe_load.FileLoadError as error:
        raise ValueError(str(error)) from error


# ----------------------------------------------------------------------------- golden file per CPU


@dataclass(frozen=True)
class CpuKernels:
    """The vector instruction sets this process's CPU kernels use: ATen's (elementwise ops, reductions) and
    oneDNN's (convolutions, which decide the golden file: measured, forcing ATen alone to AVX2 on an AVX-512 CPU
    leaves the outputs closest to `outputs.pt`, forcing oneDNN alone makes them match `outputs_avx2.pt`)."""
    aten: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    onednn: str  # "AVX512", "AVX2" or "DEFAULT" (older than AVX2)

    def describe(self) -> str:
        return f"ATen {self.aten}, oneDNN {self.onednn}"


def onednn_isa(env: dict[str, str] | None = None) -> str:
    """oneDNN's instruction set: the best the CPU has, capped by ONEDNN_MAX_CPU_ISA (or its old name
    DNNL_MAX_CPU_ISA), which oneDNN reads at its first use."""
    env = os.environ if env is None else env
    if torch.cpu._is_avx512_supported():
        hardware = "AVX512"
    else:
        hardware = "AVX2" if torch.cpu._is_avx2_supported() else "DEFAULT"
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap == "ALL" or cap.startswith(("AVX512", "AVX10", "AMX")):
        return hardware
    capped = "AVX2" if cap.startswith("AVX2") else "DEFAULT"
    return capped if hardware != "DEFAULT" else hardware


def cpu_kernels() -> CpuKernels:
    return CpuKernels(torch.backends.cpu.get_cpu_capability(), onednn_isa())


def golden_outputs_file(folder: Path, kernels: CpuKernels) -> Path:
    """`outputs_avx2.pt` when the convolutions run AVX2 code and the folder has one, else `outputs.pt` (made on
    a newer CPU; also the closest there is for CPUs older than AVX2)."""
    avx2 = folder / "outputs_avx2.pt"
    return avx2 if kernels.onednn == "AVX2" and avx2.is_file() else folder / "outputs.pt"


# ----------------------------------------------------------------------------- encoder folders


def _flatten(prefix: str, value: Any, out: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor):
        out[prefix] = value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, out)


ADAPTER_ARGS = ("extrinsics", "intrinsics", "coordinates", "depths", "opacities", "raw_gaussians", "image_shape")


def capture_intermediates(encoder: nn.Module, wanted: set[str]) -> tuple[dict[str, Tensor], list]:
    """Forward hooks named like the golden captures: `<module>.in.<i>`, `<module>.out[.<i>]`,
    and `gaussian_adapter.args.<name>`."""
    captured: dict[str, Tensor] = {}
    handles = []
    for name, module in encoder.named_modules():
        if not name or not any(key.startswith(name + ".") for key in wanted):
            continue
        if name == "gaussian_adapter":
            def pre_hook(_m, args, _name=name):
                for arg_name, value in zip(ADAPTER_ARGS, args):
                    _flatten(f"{_name}.args.{arg_name}", value, captured)
            handles.append(module.register_forward_pre_hook(pre_hook))
            continue

        def hook(_m, args, output, _name=name):
            _flatten(f"{_name}.in", args, captured)
            _flatten(f"{_name}.out", output, captured)
        handles.append(module.register_forward_hook(hook))
    return captured, handles


def build_encoder(folder: Path, options: dict | None = None):
    from .config import from_dict
    from .model.encoder import EncoderCostVolume, load_encoder_weights
    from .model.encoder.config import EncoderCostVolumeCfg

    config = json.loads((folder / "config.json").read_text())
    # options: our added encoder keys (attention, cost_volume), on top of the golden config.
    cfg = from_dict(EncoderCostVolumeCfg, {**config["encoder_cfg"], **(options or {})}, "model.encoder")
    encoder = EncoderCostVolume(cfg)
    load_encoder_weights(encoder, load(folder / "state_dict.pt"), str(folder / "state_dict.pt"))
    return encoder.float().eval()


def check_encoder_folder(folder: Path, intermediates: bool, options: dict | None = None,
                         kernels: CpuKernels | None = None) -> list[Row]:
    encoder = build_encoder(folder, options)
    inputs = load(folder / "inputs.pt")
    golden = load(golden_outputs_file(folder, kernels or cpu_kernels()))
    golden_intermediates = load(folder / "intermediates.pt") if intermediates else {}

    wanted = set(golden_intermediates) | {"depth_predictor.out.0"}
    captured, handles = capture_intermediates(encoder, wanted)
    dump: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            # The golden inputs' "deterministic" flag is the original's; its encoder samples nothing either.
            gaussians = encoder(inputs["context"], inputs["global_step"], visualization_dump=dump)
    finally:
        for handle in handles:
            handle.remove()

    rows = []
    for key, value in golden["gaussians"].items():
        rows.append(compare_outputs(f"gaussians.{key}", getattr(gaussians, key), value))
    for key, value in golden.get("visualization_dump", {}).items():
        rows.append(compare_outputs(f"visualization_dump.{key}", dump[key], value))
    for i, key in enumerate(("depths", "densities", "raw_gaussians")):
        if key in golden.get("depth_predictor", {}):
            rows.append(compare_outputs(f"depth_predictor.{key}", captured[f"depth_predictor.out.{i}"],
                                        golden["depth_predictor"][key]))
    for key, value in golden_intermediates.items():
        # The original CNN returned a one-element list ("out.0"); ours returns the tensor ("out").
        ours = captured.get(key, captured.get(key.removesuffix(".0")))
        if ours is None:
            rows.append(Row(f"{key} (not produced)", tuple(value.shape), math.inf, math.inf, math.inf))
        else:
            rows.append(compare_intermediate(f"[int] {key}", ours, value))
    return rows


# ----------------------------------------------------------------------- gaussian adapter folder


def small_rotation_angle(rotations: Tensor) -> Tensor:
    """Rotation angle from the antisymmetric part (|R - R^T|_F = 2 sqrt(2) sin(angle)): unlike the
    trace it resolves 1e-4 rad in float32. Only meaningful for angles below 90 degrees."""
    r = rotations.double()
    return torch.asin(((r - r.transpose(-1, -2)).norm(dim=(-2, -1)) / (2 * math.sqrt(2))).clamp(max=1))


def check_adapter_folder(folder: Path) -> list[Row]:
    from .config import from_dict
    from .model.encoder.config import GaussianAdapterCfg, OpacityMappingCfg
    from .model.encoder.encoder import map_pdf_to_opacity
    from .model.encoder.gaussian_adapter import (
        GaussianAdapter, build_covariance, get_world_rays, quaternion_to_matrix, sample_image_grid)
    from .model.encoder.sh_rotation import matrix_to_angles, rotate_sh, wigner_d

    meta = json.loads((folder / "meta.json").read_text())
    rows = []
    for case in meta["cases"]:
        inputs = load(folder / f"{case}_inputs.pt")
        outputs = load(folder / f"{case}_outputs.pt")
        helpers = load(folder / f"{case}_helpers.pt")
        adapter = GaussianAdapter(from_dict(GaussianAdapterCfg, dict(inputs["cfg"]), "gaussian_adapter"))
        args = inputs["args"]
        h, w = inputs["image_shape"]
        with torch.no_grad():
            result = adapter(*args.values(), (h, w))  # the golden's eps is the adapter's own 1e-8
            for key, value in outputs.items():
                rows.append(compare_outputs(f"{case}.{key}", getattr(result, key), value))
            pixel_size = 1 / torch.tensor((w, h), dtype=torch.float32)
            origins, directions = get_world_rays(args["coordinates"], args["extrinsics"], args["intrinsics"])
            raw_rotation = args["raw_gaussians"][..., 3:7]
            rotation = raw_rotation / (raw_rotation.norm(dim=-1, keepdim=True) + inputs.get("eps", 1e-8))
            ours = {
                "sh_mask": adapter.sh_mask,
                "pixel_size": pixel_size,
                "scale_multiplier": adapter.scale_multiplier(args["intrinsics"], pixel_size),
                "ray_origins": origins,
                "ray_directions": directions,
                "quaternion_normalized_xyzw": rotation,
                "quaternion_to_matrix": quaternion_to_matrix(rotation),
                "build_covariance_cam": build_covariance(result.scales, rotation),
            }
        for key, value in helpers.items():
            rows.append(compare_outputs(f"{case}.helpers.{key}", ours[key], value))

    sh = load(folder / "rotate_sh.pt")
    with torch.no_grad():
        for key, value in zip(("alpha", "beta", "gamma"), matrix_to_angles(sh["rotations"])):
            rows.append(compare_outputs(f"rotate_sh.{key}", value, sh[key]))
        angles = (sh["alpha"], sh["beta"], sh["gamma"])
        for degree in range(5):
            if f"wigner_D_l{degree}" in sh:
                rows.append(compare_outputs(f"rotate_sh.wigner_D_l{degree}", wigner_d(degree, *angles),
                                            sh[f"wigner_D_l{degree}"]))
        sh_out = rotate_sh(sh["sh_in"], sh["rotations"][:, None])
    angle = small_rotation_angle(sh["rotations"])
    trace = sh["rotations"].double().diagonal(dim1=-2, dim2=-1).sum(-1)
    tiny = (angle > 0) & (angle < 1e-3) & (trace > 2.9)  # trace > 2.9 excludes ~180 degree turns
    if (~tiny).any():
        rows.append(compare_outputs("rotate_sh.sh_out", sh_out[~tiny], sh["sh_out"][~tiny]))
    if tiny.any():
        rows.append(compare_outputs("rotate_sh.sh_out (tilt < 1e-3 rad, atol 1e-3)", sh_out[tiny],
                                    sh["sh_out"][tiny], atol=1e-3))

    grid = load(folder / "sample_image_grid.pt")
    xy, ij = sample_image_grid(tuple(grid["shape_hw"]))
    rows.append(compare_outputs("sample_image_grid.xy", xy, grid["xy"]))
    rows.append(compare_outputs("sample_image_grid.ij", ij, grid["ij"], rtol=0, atol=1e-9))

    opacity = load(folder / "map_pdf_to_opacity.pt")
    for i, case in enumerate(opacity["cases"]):
        cfg = OpacityMappingCfg(case["initial"], case["final"], case["warm_up"])
        rows.append(compare_outputs(
            f"map_pdf_to_opacity[{i}] ({case['initial']}->{case['final']}, step {case['global_step']})",
            map_pdf_to_opacity(opacity["pdf"], case["global_step"], cfg), case["opacity"]))
    return rows


# ----------------------------------------------------------------------------------- driver


def check_folder(folder: Path, intermediates: bool = False, options: dict | None = None,
                 kernels: CpuKernels | None = None) -> list[Row]:
    """kernels: the CPU kernels whose golden file to compare with (default: this process's)."""
    if (folder / "config.json").is_file():
        return check_encoder_folder(folder, intermediates, options, kernels)
    if (folder / "meta.json").is_file():
        return check_adapter_folder(folder)
    raise FileNotFoundError(f"{folder} is not a parity folder: expected config.json (encoder) or meta.json (adapter)")


def golden_line(folder: Path, kernels: CpuKernels) -> str:
    """Which file the final outputs were compared with, and why."""
    if not (folder / "config.json").is_file():
        return f"golden: {folder.name}/*_outputs.pt (no per-CPU files; CPU kernels: {kernels.describe()})"
    used = golden_outputs_file(folder, kernels)
    return f"golden: {used.name} (CPU kernels: {kernels.describe()}; ../shared/golden/README.md, per CPU capability)"


def format_table(folder: Path, rows: list[Row], kernels: CpuKernels | None = None) -> str:
    width = max([len(r.name) for r in rows] + [6])
    lines = [f"== {folder}", golden_line(folder, kernels or cpu_kernels()), f"{'tensor':<{width}}  {'shape':<22} {'max abs':>10} {'max rel':>10} {'worst':>8}  ok"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {str(list(r.shape)):<22} {r.max_abs:>10.3e} {r.max_rel:>10.3e} "
                     f"{r.worst:>8.3f}  {'PASS' if r.ok else 'FAIL'}")
    failed = sum(not r.ok for r in rows)
    lines.append(f"-> {len(rows) - failed}/{len(rows)} pass" + (f", {failed} FAIL" if failed else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fabric_mvsplat.parity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="golden folders, e.g. ../shared/golden/encoder_small")
    parser.add_argument("--intermediates", action="store_true", help="also compare intermediates.pt captures")
    parser.add_argument("--attention", choices=["sdpa", "original"], default="sdpa",
                        help="model.encoder.attention for encoder folders (default sdpa)")
    parser.add_argument("--cost-volume", choices=["auto", "warp", "correlate"], default="auto",
                        help="model.encoder.cost_volume for encoder folders (default auto)")
    args = parser.parse_args(argv)
    options = {"attention": args.attention, "cost_volume": args.cost_volume}
    kernels = cpu_kernels()
    print(f"CPU kernels: {kernels.describe()} (torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True)
    all_ok = True
    for folder in args.folders:
        try:
            rows = check_folder(folder, args.intermediates, options, kernels)
        except (FileNotFoundError, ValueError) as error:
            print(f"== {folder}\nerror: {error}", file=sys.stderr)
            all_ok = False
            continue
        print(format_table(folder, rows, kernels), flush=True)
        all_ok &= all(r.ok for r in rows)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
