"""How close the encoder's training pass comes to the machine's matrix-product speed.

    OMP_NUM_THREADS=2 python -m benchmarks.encoder_efficiency --image 256 --rounds 2 \
        --save benchmarks/results/encoder-efficiency-re10k-256.json

The encoder (default: the full `+experiment=re10k` one, 2 context views, batch 1) runs forward + backward;
torch.utils.flop_counter.FlopCounterMode counts its FLOPs (matrix products, convolutions, attention: the
operators torch counts), once. Rounds then alternate a timed encoder pass with timed large fp32 matrix
products (--matmul N: [N, N] @ [N, N], 2 N^3 FLOPs; --matmul-repeats before and after each pass), so both see
the same machine load; the figures are the encoder's GFLOP/s as a fraction of the matrix product's, best
against best and median against median (on a loaded machine the medians are the fairer pair). A profiled pass says where the
time goes: the operators FlopCounterMode counts (with their own GFLOP/s) and everything else (normalisation,
elementwise, copies, softmax), which does no counted FLOPs.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.compare_encoder import CONFIGS, loss_of
from benchmarks.conftest import environment_info, load_average, make_views
from fabric_mvsplat.config import from_dict
from fabric_mvsplat.model.encoder import EncoderCostVolume, EncoderCostVolumeCfg

# aten operators whose FLOPs FlopCounterMode counts (forward and backward), by profiler name.
COUNTED = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::convolution_backward",
           "aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
           "aten::_convolution", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::convolution_overrideable")


def matmul_seconds(size: int, repeats: int) -> list[float]:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up (allocations, thread pool)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoder_efficiency",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="re10k")
    parser.add_argument("--image", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--matmul", type=int, default=2048, help="side of the reference matrix product (default 2048)")
    parser.add_argument("--matmul-repeats", type=int, default=5, help="matrix products before and after each "
                        "encoder pass (default 5)")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args(argv)
    env = {**environment_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "torch_threads": torch.get_num_threads()}

    torch.manual_seed(0)
    encoder = EncoderCostVolume(from_dict(EncoderCostVolumeCfg, CONFIGS[args.config], "model.encoder")).train()
    context = make_views(1, 2, args.image, "cpu")

    def training_pass() -> None:
        encoder.zero_grad(set_to_none=True)
        loss_of(encoder(context, global_step=0)).backward()

    counter = FlopCounterMode(display=False, depth=2)
    with counter:
        training_pass()  # also the warm-up
    total_flops = counter.get_total_flops()
    by_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()
                 if name != "Global" and name.count(".") <= 1}

    encoder_s, matmul_s, loads = [], [], []
    for round_index in range(args.rounds):
        loads.append(load_average())
        matmul_s += matmul_seconds(args.matmul, args.matmul_repeats)
        start = time.perf_counter()
        training_pass()
        encoder_s.append(time.perf_counter() - start)
        print(f"round {round_index}: encoder {encoder_s[-1]:.2f} s, matmul {matmul_s[-1] * 1e3:.0f} ms "
              f"(load {loads[-1]})", flush=True)
    matmul_s += matmul_seconds(args.matmul, args.matmul_repeats)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        training_pass()
    self_seconds = defaultdict(float)
    for event in prof.key_averages():
        self_seconds[event.key] += event.self_cpu_time_total / 1e6
    profiled = sum(self_seconds.values())
    counted = sum(seconds for name, seconds in self_seconds.items() if name in COUNTED)
    others = sorted(((name, seconds) for name, seconds in self_seconds.items() if name not in COUNTED),
                    key=lambda item: -item[1])[:15]

    # Best against best, and typical against typical: under a varying load a short matrix product catches quiet
    # moments that a long encoder pass cannot, so the medians are the fairer pair there.
    matmul_gflops = 2 * args.matmul**3 / min(matmul_s) / 1e9
    encoder_gflops = total_flops / min(encoder_s) / 1e9
    matmul_gflops_median = 2 * args.matmul**3 / statistics.median(matmul_s) / 1e9
    encoder_gflops_median = total_flops / statistics.median(encoder_s) / 1e9
    result = {
        "command": "python -m benchmarks.encoder_efficiency " + " ".join(sys.argv[1:] if argv is None else argv),
        "datetime": datetime.datetime.now().isoformat(), "machine": env, "config": args.config,
        "image": args.image, "load_average": loads,
        "encoder_forward_backward_gflop": total_flops / 1e9,
        "encoder_gflop_by_module": {name: flops / 1e9 for name, flops in by_module.items()},
        "encoder_seconds": encoder_s, "encoder_gflops_per_s": encoder_gflops,
        "matmul_size": args.matmul, "matmul_seconds": matmul_s, "matmul_gflops_per_s": matmul_gflops,
        "efficiency": encoder_gflops / matmul_gflops,
        "matmul_gflops_per_s_median": matmul_gflops_median, "encoder_gflops_per_s_median": encoder_gflops_median,
        "efficiency_of_medians": encoder_gflops_median / matmul_gflops_median,
        "profiled_pass": {"seconds": profiled, "counted_ops_seconds": counted,
                          "counted_ops_gflops_per_s": total_flops / counted / 1e9 if counted else None,
                          "other_ops_seconds": profiled - counted,
                          "top_other_ops_seconds": dict(others)},
    }
    print(f"encoder {args.config} {args.image}x{args.image} forward+backward: {total_flops / 1e9:.0f} GFLOP in "
          f"{min(encoder_s):.2f} s = {encoder_gflops:.1f} GFLOP/s; {args.matmul}^2 matmul {matmul_gflops:.1f} GFLOP/s "
          f"-> {100 * encoder_gflops / matmul_gflops:.0f} % (medians: {encoder_gflops_median:.1f} / "
          f"{matmul_gflops_median:.1f} GFLOP/s = {100 * encoder_gflops_median / matmul_gflops_median:.0f} %) "
          f"(threads {torch.get_num_threads()}, load {loads})")
    print(f"profiled pass {profiled:.2f} s: counted ops (matmul, conv, attention) {counted:.2f} s "
          f"({total_flops / max(counted, 1e-9) / 1e9:.1f} GFLOP/s), the rest {profiled - counted:.2f} s; "
          f"top of the rest: {[(name, round(s, 3)) for name, s in others[:8]]}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
