"""What trainer.deterministic=true costs: one training step of the demo model (forward, backward, Adam) timed with
torch's deterministic algorithms off and on, alternating in one process so that the machine's load hits both
alike; prints the ratio of the medians.

    python -m benchmarks.deterministic_cost [--steps 20] [--device cpu|cuda] [--image-size 48]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=48)
    args = parser.parse_args()

    from fabric_mvsplat.data import StepTracker, TrainStream
    from fabric_mvsplat.data.synthetic import SyntheticSpec, generate_synthetic_dataset
    from fabric_mvsplat.debug.determinism import make_deterministic
    from fabric_mvsplat.build import make_model
    from hydra import compose, initialize_config_dir

    from fabric_mvsplat.config import load_config

    device = torch.device(args.device)
    make_deterministic(True)  # sets CUBLAS_WORKSPACE_CONFIG before the CUDA context exists; toggled below
    with tempfile.TemporaryDirectory() as root:
        generate_synthetic_dataset(Path(root), SyntheticSpec(train_scenes=2, test_scenes=1, frames=24, seed=0,
                                                             height=args.image_size, width=args.image_size),
                                   progress=False)
        size = args.image_size
        overrides = ["+experiment=demo", f"dataset.roots=[{root}]", f"dataset.image_shape=[{size},{size}]"]
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "fabric_mvsplat" / "configs"),
                                   version_base=None):
            cfg = load_config(compose("main", overrides=overrides))
        batch = next(iter(TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)))
    model = make_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    batch = {key: ({k: v.to(device) for k, v in value.items()} if isinstance(value, dict) else value)
             for key, value in batch.items()}

    def step() -> float:
        start = time.perf_counter()
        output = model(batch, 0)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for deterministic in (False, True):  # warm-up both
        torch.use_deterministic_algorithms(deterministic)
        step()
    seconds = {False: [], True: []}
    for _ in range(args.steps):
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic
            seconds[deterministic].append(step())
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"{device.type} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"{torch.get_num_threads()} threads, demo model at {size}x{size}, {args.steps} steps each: "
          f"median step {off * 1000:.1f} ms off, {on * 1000:.1f} ms deterministic: ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
