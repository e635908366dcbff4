"""Cost-volume encoder alone: forward (inference) and forward + backward (training).

Sizes: the golden small encoder at 64x64 (CPU and CUDA) and the full +experiment=re10k encoder at
256x256, 2 context views, batch 1 (CUDA only: the paper's setting). Precision 32-true or
bf16-mixed (torch.autocast). Peak memory goes to extra_info through the shared `bench` fixture
(CUDA max_memory_allocated; CPU process RSS).
"""

import pytest
import torch

from benchmarks.conftest import make_views
from fabric_mvsplat.config import from_dict
from fabric_mvsplat.model.encoder import EncoderCostVolume, EncoderCostVolumeCfg

RE10K = dict(d_feature=128, num_depth_candidates=128, costvolume_unet_feat_dim=128,
             costvolume_unet_channel_mult=[1, 1, 1], costvolume_unet_attn_res=[4], depth_unet_feat_dim=32,
             depth_unet_attn_res=[16], depth_unet_channel_mult=[1, 1, 1, 1, 1], unimatch_weights_path=None)
SMALL = {**RE10K, "d_feature": 64, "num_depth_candidates": 16, "costvolume_unet_feat_dim": 64}
# name -> (encoder config, image side); small-32 is the smoke-run size (16 is the minimum).
SIZES = {"small-32": (SMALL, 32), "small-64": (SMALL, 64), "re10k-256": (RE10K, 256)}
LARGE = pytest.mark.large
SIZE_PARAMS = [pytest.param(name, marks=LARGE if name != "small-32" else ()) for name in SIZES]


def build(size: str, device: str) -> tuple[EncoderCostVolume, dict]:
    if size == "re10k-256" and device == "cpu":
        pytest.skip("the full re10k encoder at 256x256 is a GPU case; CPU runs keep to small-64")
    cfg_dict, image = SIZES[size]
    torch.manual_seed(0)
    encoder = EncoderCostVolume(from_dict(EncoderCostVolumeCfg, cfg_dict, "model.encoder")).to(device)
    return encoder, make_views(1, 2, image, device)


def check(gaussians, image: int) -> None:
    assert gaussians.means.shape == (1, 2 * image * image, 3)
    assert torch.isfinite(gaussians.means.float()).all()


@pytest.mark.parametrize("size", SIZE_PARAMS)
def test_encoder_forward(bench, device, precision, size):
    encoder, context = build(size, device)
    encoder.eval()

    def forward():
        with torch.no_grad():
            return encoder(context, global_step=0)

    gaussians = bench(forward, device=device, precision=precision, items=1, unit="scenes",
                      paper="encoder" if size == "re10k-256" else None, size=size)
    check(gaussians, SIZES[size][1])


@pytest.mark.parametrize("size", SIZE_PARAMS)
def test_encoder_forward_backward(bench, device, precision, size):
    encoder, context = build(size, device)
    encoder.train()

    def zero_grad():
        encoder.zero_grad(set_to_none=True)

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=precision == "bf16-mixed"):
            gaussians = encoder(context, global_step=0)
            loss = (gaussians.means.float().mean() + gaussians.harmonics.float().mean()
                    + gaussians.opacities.float().mean() + gaussians.covariances.float().mean())
        loss.backward()  # outside autocast, as Fabric does
        return gaussians

    gaussians = bench(step, device=device, precision=precision, setup=zero_grad, wrap_autocast=False,
                      items=1, unit="scenes", size=size,
                      gradient_checkpointing=encoder.cfg.gradient_checkpointing)
    check(gaussians, SIZES[size][1])
    assert encoder.depth_predictor.to_gaussians[0].weight.grad is not None
