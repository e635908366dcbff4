"""Random-but-plausible LPIPS weight files for tests and benchmarks (the real ones are ~600 MB downloads)."""

from pathlib import Path

import torch

from fabric_mvsplat.metrics.lpips import LPIPS


def write_lpips_test_weights(weights_dir: Path, seed: int) -> None:
    """Write random-but-plausible `vgg16.pth` and `vgg.pth` in the real files' formats.

    VGG convs get He-normal weights (activations keep their scale through 13 layers) and
    small biases; the heads get non-negative weights like the trained lpips heads. The
    torchvision classifier (about 120M parameters) is left out: LPIPS never reads it.
    """
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    reference = LPIPS()
    vgg_state, lin_state = {}, {}
    for name, buffer in reference.named_buffers():
        if name.startswith("features.") and name.endswith(".weight"):
            fan_in = buffer[0].numel()
            std = (2.0 / fan_in) ** 0.5
            vgg_state[name] = torch.randn(buffer.shape, generator=generator) * std
        elif name.startswith("features."):
            vgg_state[name] = 0.01 * torch.randn(buffer.shape, generator=generator)
        elif name.startswith("lin"):
            channels = buffer.shape[1]
            # scaled so that unrelated images score about 0.4, as real LPIPS-VGG roughly does
            lin_state[name] = torch.rand(buffer.shape, generator=generator) * (50.0 / channels)
    torch.save(vgg_state, weights_dir / "vgg16.pth")
    torch.save(lin_state, weights_dir / "vgg.pth")
