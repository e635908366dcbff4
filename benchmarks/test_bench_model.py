"""The whole model: inference end to end, one training step, the fast paths, activation memory.

- inference: encoder + render 3 targets, batch 1, 2 context views: the figure comparable to the
  paper's 0.044 s per scene (0.043 s encoder + 0.0015 s per view; 0.86 GB). bf16-mixed cases also
  record their parity with fp32 (max |Δ| of the rendered images and of every Gaussian field).
- train step: forward (encoder, render 4 targets, MSE + LPIPS as +experiment=re10k), backward,
  global-norm clip at 0.5, Adam step, one-cycle scheduler step.
- encoder compile: eager vs `torch.compile` (what `trainer.compile=true` does), first-call cost kept.
- activation memory: bytes autograd keeps for backward after one training forward, per module,
  with and without gradient checkpointing; linear in batch size, so it scales to batch 14.

CPU runs keep to the golden small encoder at 64x64; the paper's setting (full re10k config,
256x256) is a CUDA case and skips on CPU.
"""

import time
from collections import defaultdict

import pytest
import torch

from benchmarks.conftest import autocast, make_batch, synchronize
from fabric_mvsplat.types import Gaussians

# name -> (encoder size, image side, batch); small-32 is the smoke-run size, the rest are `large`.
INFERENCE_SIZES = {"small-32": ("small", 32, 1), "small-64": ("small", 64, 1), "re10k-256": ("re10k", 256, 1)}
TRAIN_SIZES = {"small-32-b1": ("small", 32, 1), "small-64-b1": ("small", 64, 1), "re10k-256-b1": ("re10k", 256, 1),
               "re10k-256-b4": ("re10k", 256, 4)}
CUDA_ONLY = "the full re10k config at 256x256 is a GPU case; CPU runs keep to small-64 (2 shared cores)"


def size_params(sizes: dict) -> list:
    return [pytest.param(name, marks=() if name.startswith("small-32") else pytest.mark.large) for name in sizes]


def skip_big_on_cpu(size: str, device: str) -> None:
    if size.startswith("re10k-256") and device == "cpu":
        pytest.skip(CUDA_ONLY)


def build(make_cfg, encoder: str, image: int, device: str, extra: list[str] = ()):
    from fabric_mvsplat.build import make_model

    torch.manual_seed(0)
    cfg = make_cfg(encoder, image=image, extra=list(extra))
    return cfg, make_model(cfg).to(device)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def parity(reference: tuple[Gaussians, torch.Tensor], other: tuple[Gaussians, torch.Tensor]) -> dict[str, float]:
    """max |Δ| per output (and the reference's max |value| for scale)."""
    (g_ref, color_ref), (g, color) = reference, other
    out = {"color": max_abs_diff(color_ref, color)}
    for field in ("means", "covariances", "harmonics", "opacities"):
        out[field] = max_abs_diff(getattr(g_ref, field), getattr(g, field))
        out[f"{field}_max_abs"] = getattr(g_ref, field).abs().max().item()
    return out


@pytest.mark.parametrize("size", size_params(INFERENCE_SIZES))
def test_inference(bench, benchmark, device, precision, size, make_cfg):
    """Encoder + render 3 target views of one scene (the paper's per-scene time)."""
    skip_big_on_cpu(size, device)
    encoder_size, image, batch_size = INFERENCE_SIZES[size]
    _, model = build(make_cfg, encoder_size, image, device)
    model.eval()
    batch = model.data_shim(make_batch(batch_size, 2, 3, image, device))
    context, target = batch["context"], batch["target"]
    split = defaultdict(list)

    @torch.no_grad()
    def infer():
        start = time.perf_counter()
        gaussians = model.encode(context, 0)
        synchronize(device)
        middle = time.perf_counter()
        color = model.render_views(gaussians, target, (image, image)).color
        synchronize(device)
        split["encoder"].append(middle - start)
        split["render"].append(time.perf_counter() - middle)
        return gaussians, color

    rounds = 5
    gaussians, color = bench(infer, device=device, precision=precision, rounds=rounds, items=batch_size,
                             unit="scenes", paper="scene", paper_memory=True, image=image, batch=batch_size)
    assert color.shape == (batch_size, 3, 3, image, image)
    # The split over the timed rounds (warm-up excluded), next to the paper's 0.043 s and 0.0015 s/view.
    timed = min(rounds, len(split["encoder"]))
    encoder_s = sum(split["encoder"][-timed:]) / timed
    render_view_s = sum(split["render"][-timed:]) / timed / 3
    benchmark.extra_info.update(encoder_seconds=encoder_s, encoder_vs_paper=encoder_s / 0.043,
                                render_seconds_per_view=render_view_s, render_view_vs_paper=render_view_s / 0.0015)
    if precision == "bf16-mixed":
        diff = parity(infer(), (gaussians, color))  # fp32: same weights and inputs, no autocast
        benchmark.extra_info.update(parity_vs_fp32=diff, note=(
            f"max|Δ| vs fp32: color {diff['color']:.2g}, means {diff['means']:.2g} (max {diff['means_max_abs']:.3g}), "
            f"harmonics {diff['harmonics']:.2g}, opacities {diff['opacities']:.2g}"))
        xfail_if_not_finite(benchmark, {"color": color, **vars(gaussians)})
        assert diff["color"] < 0.5, f"bf16 renders far from fp32: {diff}"
    assert torch.isfinite(color).all()


def xfail_if_not_finite(benchmark, tensors: dict[str, torch.Tensor]) -> None:
    """bf16-mixed: a known-bad output is reported (timing kept) instead of failing the suite silently or loudly."""
    bad = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if bad:
        benchmark.extra_info["note"] = f"NON-FINITE under bf16-mixed: {', '.join(bad)}; " + \
            benchmark.extra_info.get("note", "")
        pytest.xfail(f"bf16-mixed gives non-finite {bad}: the encoder's Gaussian adapter (SH rotation: acos/atan2 "
                     "of bf16 rotation entries) must run in fp32 under autocast")


def make_train_step(model, precision: str, device: str, batch: dict, max_steps: int = 1000):
    """One optimizer step exactly as the loop does it, minus Fabric: returns the step function."""
    from fabric_mvsplat.config import OptimizerCfg
    from fabric_mvsplat.build import make_optimizer, make_scheduler

    optimizer = make_optimizer(OptimizerCfg(), model)
    scheduler = make_scheduler(OptimizerCfg(), max_steps, optimizer)
    step = [0]

    def train_step() -> torch.Tensor:
        with autocast(device, precision):  # forward only, as Fabric's bf16-mixed
            output = model(batch, step[0])
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step[0] += 1
        return output.loss.detach()

    return train_step


@pytest.mark.parametrize("size", size_params(TRAIN_SIZES))
def test_train_step(bench, benchmark, device, precision, size, make_cfg):
    """Forward + backward + clip + Adam + scheduler, 2 context views, 4 targets, MSE + LPIPS."""
    skip_big_on_cpu(size, device)
    encoder_size, image, batch_size = TRAIN_SIZES[size]
    _, model = build(make_cfg, encoder_size, image, device)
    model.train()
    train_step = make_train_step(model, precision, device, make_batch(batch_size, 2, 4, image, device))
    before = next(model.encoder.parameters()).detach().clone()
    loss = bench(train_step, device=device, precision=precision, wrap_autocast=False, rounds=3,
                 items=batch_size, unit="scenes", image=image, batch=batch_size)
    if precision == "bf16-mixed":
        xfail_if_not_finite(benchmark, {"loss": loss})
    assert torch.isfinite(loss)
    assert not torch.equal(before, next(model.encoder.parameters()).detach()), "the optimizer step changed nothing"


@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_encoder_compile(bench, benchmark, device, mode, make_cfg, request):
    """Encoder inference, eager vs `model.encoder.compile()` (trainer.compile=true), small-64."""
    if mode == "compile":
        if benchmark.disabled:
            pytest.skip("compiling takes minutes on CPU; the smoke run covers eager only")
        if device == "cpu" and not request.config.getoption("--bench-compile"):
            pytest.skip("torch.compile of the encoder took ~500 s on 2 shared CPU cores; opt in with --bench-compile")
    _, model = build(make_cfg, "small", 64, device)
    model.eval()
    context = make_batch(1, 2, 1, 64, device)["context"]

    @torch.no_grad()
    def encode():
        return model.encode(context, 0)

    eager = encode()
    if mode == "compile":
        model.encoder.compile()
    start = time.perf_counter()
    reference = encode()  # eager: warm-up; compile: the compilation itself (a failure to compile fails here)
    synchronize(device)
    first_call = time.perf_counter() - start
    gaussians = bench(encode, device=device, rounds=5, warmup=1, items=1, unit="scenes",
                      compare=f"encoder-compile/{device}/small-64", variant=mode, baseline=mode == "eager",
                      first_call_seconds=first_call, note=f"first call {first_call:.1f} s")
    if mode == "eager":
        assert torch.equal(gaussians.means, reference.means)
    # The compiled encoder computes what the eager one does (fused kernels reorder float sums).
    torch.testing.assert_close(gaussians.means, eager.means, rtol=2e-3, atol=2e-3)
    assert torch.isfinite(gaussians.means).all()


class SavedTensorMeter:
    """Bytes autograd saves for backward during a forward, attributed to the innermost module
    at most `depth` levels deep. Parameters are excluded; storages shared by several saved
    tensors are counted once. Checkpointed regions save only their inputs, so they show the saving.
    """

    def __init__(self, model: torch.nn.Module, depth: int = 3) -> None:
        self.by_module: dict[str, int] = defaultdict(int)
        self.seen: set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.stack = ["(top level)"]
        self.handles = []
        for name, module in model.named_modules():
            if name and name.count(".") < depth:
                self.handles.append(module.register_forward_pre_hook(self._enter(name)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args) -> None:
            self.stack.append(name)

        return hook

    def _leave(self, module, args, output) -> None:  # returning None keeps the module's output
        self.stack.pop()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen and storage.device.type != "meta":
            self.seen.add(storage.data_ptr())
            self.by_module[self.stack[-1]] += storage.nbytes()
        return tensor

    def __enter__(self) -> "SavedTensorMeter":
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()

    @property
    def total(self) -> int:
        return sum(self.by_module.values())


def part_of(module: str) -> str:
    """Module path (SavedTensorMeter's innermost, <= 4 levels) -> the budget's part."""
    if module.startswith("encoder.backbone"):
        return "backbone+transformer"
    if module.startswith(("encoder.depth_predictor.corr_refine_net", "encoder.depth_predictor.refine_unet")):
        return "U-Nets"
    if module == "encoder.depth_predictor":  # correlation_volume runs in the depth predictor's own forward
        return "cost volume"
    if module.startswith("encoder.depth_predictor."):
        return "depth/Gaussian heads"
    if module.startswith("encoder"):
        return "Gaussian adapter"
    if module.startswith("decoder"):
        return "renderer"
    if module.startswith("losses") and "lpips" in module:
        return "LPIPS"
    return "other (losses, glue)"


def by_part(by_module: dict[str, int]) -> dict[str, int]:
    parts: dict[str, int] = defaultdict(int)
    for module, nbytes in by_module.items():
        parts[part_of(module)] += nbytes
    return dict(parts)


MEMORY_SIZES = {"small-32": ("small", 32), "re10k-64": ("re10k", 64), "re10k-128": ("re10k", 128)}


# on: the original's U-Net attention checkpointing; off: none; on+lpips: also the frozen LPIPS VGG.
@pytest.mark.parametrize("checkpointing", ["on", "off", "on+lpips"])
@pytest.mark.parametrize("size", size_params(MEMORY_SIZES))
def test_activation_memory(bench, benchmark, size, checkpointing, make_cfg):
    """Saved-for-backward bytes of one training forward (batch 1) and the batch-14 256x256 estimate."""
    encoder_size, image = MEMORY_SIZES[size]
    flag = "false" if checkpointing == "off" else "true"
    lpips_flag = "true" if checkpointing == "on+lpips" else "false"
    _, model = build(make_cfg, encoder_size, image, "cpu", extra=[f"model.encoder.gradient_checkpointing={flag}",
                                                                   f"loss.lpips.gradient_checkpointing={lpips_flag}"])
    model.train()
    batch = make_batch(1, 2, 4, image, "cpu")
    meters = []

    def forward():
        with SavedTensorMeter(model, depth=4) as meter:
            loss = model(batch, 0).loss
        meters.append(meter)
        return loss

    loss = bench(forward, device="cpu", rounds=1, warmup=0, image=image, checkpointing=checkpointing)
    assert torch.isfinite(loss)
    meter = meters[-1]
    assert meter.total > 0
    parts = by_part(meter.by_module)
    expected = {"backbone+transformer", "cost volume", "U-Nets", "depth/Gaussian heads", "renderer", "LPIPS"}
    assert expected <= {part for part, nbytes in parts.items() if nbytes > 0}, f"unattributed parts: {parts}"
    # Activations grow with batch x pixels; at the full config this is the batch-14, 256x256 figure.
    scale = 14 * (256 / image) ** 2
    top = sorted(meter.by_module.items(), key=lambda kv: -kv[1])[:8]
    benchmark.extra_info.update(
        saved_bytes=meter.total, saved_bytes_by_module=dict(top), saved_bytes_by_part=by_part(meter.by_module),
        estimate_batch14_256_bytes=meter.total * scale,
        note=f"saved {meter.total / 1e6:.0f} MB; x{scale:.0f} -> {meter.total * scale / 1e9:.1f} GB at batch 14, 256²",
    )
