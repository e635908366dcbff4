"""Encoder: key layout, ablations, forward shapes, gradients, bf16, data shim (CPU, tiny sizes)."""

import json
import math
from dataclasses import replace

import pytest
from conftest import SHARED
import torch
from einops import rearrange

from fabric_mvsplat.config import from_dict
from fabric_mvsplat.errors import ConfigError
from fabric_mvsplat.model.decoder.sh import SH_C0
from fabric_mvsplat.model.encoder import EncoderCostVolume, EncoderCostVolumeCfg

GOLDEN = SHARED / "golden"

# +experiment=re10k; written out so the layout test also runs without ../shared.
RE10K = dict(d_feature=128, num_depth_candidates=128, costvolume_unet_feat_dim=128,
             costvolume_unet_channel_mult=[1, 1, 1], costvolume_unet_attn_res=[4], depth_unet_feat_dim=32,
             depth_unet_attn_res=[16], depth_unet_channel_mult=[1, 1, 1, 1, 1], unimatch_weights_path=None)
# The golden small encoder: same tree as re10k, narrower.
SMALL = {**RE10K, "d_feature": 64, "num_depth_candidates": 16, "costvolume_unet_feat_dim": 64}


def cfg(**overrides) -> EncoderCostVolumeCfg:
    return from_dict(EncoderCostVolumeCfg, {**SMALL, **overrides}, "model.encoder")


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_context(b: int, v: int, h: int, w: int, seed: int = 0) -> dict:
    """Cameras on a small arc looking down +z at a scene 2-6 units away."""
    g = torch.Generator().manual_seed(seed)
    extrinsics = torch.eye(4).repeat(b, v, 1, 1)
    for i in range(v):
        angle = 0.05 * (i - (v - 1) / 2)
        extrinsics[:, i, 0, 0] = extrinsics[:, i, 2, 2] = math.cos(angle)
        extrinsics[:, i, 0, 2], extrinsics[:, i, 2, 0] = math.sin(angle), -math.sin(angle)
        extrinsics[:, i, 0, 3] = 0.2 * i
    intrinsics = torch.tensor([[0.9, 0, 0.5], [0, 0.9 * w / h, 0.5], [0, 0, 1]]).repeat(b, v, 1, 1)
    return {
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "image": torch.rand(b, v, 3, h, w, generator=g),
        "near": torch.full((b, v), 1.0),
        "far": torch.full((b, v), 100.0),
        "index": torch.arange(v).repeat(b, 1),
    }


def perturbed(encoder: EncoderCostVolume, seed: int = 0) -> EncoderCostVolume:
    """Un-zero the zero-initialised U-Net norms so every branch carries signal and gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if (p == 0).all() and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return encoder


# ------------------------------------------------------------------------------------ layout


def test_full_re10k_layout_matches_original():
    encoder = EncoderCostVolume(cfg(**RE10K))
    state = encoder.state_dict()
    assert len(state) == 471
    assert num_params(encoder) == 11_955_734
    assert "gaussian_adapter.sh_mask" not in state  # non-persistent, rebuilt in __init__
    assert encoder.gaussian_adapter.sh_mask.shape == (25,)
    keys_file = GOLDEN / "keys_re10k_full.json"
    if not keys_file.is_file():
        pytest.skip(f"{keys_file} not found (../shared/golden beside the checkout)")
    golden = json.loads(keys_file.read_text())
    expected = [(k, s) for k, s, _ in golden["encoder"]["state_dict"]]
    assert [(k, list(v.shape)) for k, v in state.items()] == expected
    assert from_dict(EncoderCostVolumeCfg, golden["resolved_encoder_cfg"]) == replace(
        cfg(**RE10K), unimatch_weights_path=golden["resolved_encoder_cfg"]["unimatch_weights_path"])


@pytest.mark.parametrize("overrides, params, check", [
    ({"wo_depth_refine": True}, 11_401_044,
     lambda keys: "depth_predictor.refine_unet.weight" in keys and not any("to_disparity" in k for k in keys)),
    ({"gaussians_per_pixel": 3}, 11_958_042, lambda keys: True),
    ({"wo_cost_volume": True, "wo_depth_refine": True}, 11_237_204, lambda keys: True),
    ({"wo_cost_volume_refine": True, "wo_depth_refine": True}, 5_801_044,
     lambda keys: "depth_predictor.corr_project.weight" in keys and not any("corr_refine_net" in k for k in keys)),
    ({"wo_backbone_cross_attn": True, "wo_depth_refine": True}, 11_006_292,
     lambda keys: "backbone.transformer.layers.0.self_attn.mlp.0.weight" in keys
     and not any("cross_attn_ffn" in k for k in keys)),
    # the yaml default (D=32, 64-channel depth U-Net, no attention)
    ({"num_depth_candidates": 32, "depth_unet_feat_dim": 64, "depth_unet_attn_res": [],
      "depth_unet_channel_mult": [1, 1, 1], "costvolume_unet_attn_res": []}, 11_898_198, lambda keys: True),
])
def test_ablation_layouts(overrides, params, check):
    encoder = EncoderCostVolume(cfg(**{**RE10K, **overrides}))
    assert num_params(encoder) == params
    assert check(set(encoder.state_dict()))
    if overrides == {"wo_depth_refine": True}:
        assert len(encoder.state_dict()) == 269


def test_epipolar_transformer_rejected():
    with pytest.raises(ConfigError, match="use_epipolar_trans"):
        cfg(use_epipolar_trans=True)


def test_wo_cost_volume_refine_needs_matching_width():
    with pytest.raises(ConfigError, match="costvolume_unet_feat_dim"):
        cfg(wo_cost_volume_refine=True)


# ----------------------------------------------------------------------------------- forward


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
def test_forward_three_views_batch_two_matches_per_item():
    encoder = perturbed(EncoderCostVolume(cfg())).eval()
    context = make_context(b=2, v=3, h=16, w=32)
    dump = {}
    with torch.no_grad():
        gaussians = encoder(context, global_step=0, visualization_dump=dump)
        first = encoder({k: v[:1] for k, v in context.items()}, global_step=0)
    g = 3 * 16 * 32
    assert gaussians.means.shape == (2, g, 3)
    assert gaussians.covariances.shape == (2, g, 3, 3)
    assert gaussians.harmonics.shape == (2, g, 3, 25)
    assert gaussians.opacities.shape == (2, g)
    assert dump["depth"].shape == (2, 3, 16, 32, 1, 1)
    assert dump["rotations"].shape == (2, g, 4)
    assert ((dump["depth"] >= 1.0 - 1e-4) & (dump["depth"] <= 100.0 + 1e-2)).all()
    # Batch items never mix: the (v b) ordering inside the depth predictor is consistent.
    torch.testing.assert_close(gaussians.means[:1], first.means, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gaussians.opacities[:1], first.opacities, rtol=1e-4, atol=1e-5)


def test_gaussians_per_pixel_three():
    encoder = EncoderCostVolume(cfg(gaussians_per_pixel=3)).eval()
    with torch.no_grad():
        gaussians = encoder(make_context(1, 2, 16, 16), global_step=0)
    assert gaussians.means.shape == (1, 2 * 16 * 16 * 3, 3)
    assert gaussians.opacities.max() <= 1 / 3 + 1e-6


def test_image_size_checked():
    encoder = EncoderCostVolume(cfg())
    with pytest.raises(ValueError, match="multiple of 16"):
        encoder(make_context(1, 2, 40, 32), global_step=0)


def test_gradient_reaches_every_trained_parameter():
    encoder = perturbed(EncoderCostVolume(cfg())).train()
    gaussians = encoder(make_context(1, 2, 16, 16), global_step=0)
    # The renderer uses SH degrees <= 3, so degree-4 channels get no gradient there.
    loss = (gaussians.means.mean() + gaussians.covariances.mean() + gaussians.opacities.mean()
            + gaussians.harmonics[..., :16].mean())
    loss.backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    # Raw channels: 2 offset, 3 scale, 4 rotation, then (rgb, 25) SH; degree 4 = coefficients 16..24.
    sh4 = torch.tensor([9 + 25 * c + i for c in range(3) for i in range(16, 25)])
    head_bias = encoder.depth_predictor.to_gaussians[2].bias.grad
    assert (head_bias[sh4] == 0).all()
    others = torch.ones(84, dtype=torch.bool)
    others[sh4] = False
    assert (head_bias[others] != 0).all()


def test_straight_through_clamp_keeps_values_and_lets_far_plane_gaussians_come_back():
    """Every refined disparity pushed past 1/far (the demo's collapse): the original's clamp leaves the
    disparity head without gradient; `straight_through` gives the same Gaussians and a gradient that pulls
    them nearer."""
    context = make_context(1, 2, 16, 16)
    outputs = {}
    for clamp in ("hard", "straight_through"):
        torch.manual_seed(0)
        encoder = perturbed(EncoderCostVolume(cfg(disparity_clamp=clamp))).train()
        with torch.no_grad():
            encoder.depth_predictor.to_disparity[2].bias[0] = -10.0  # delta disparity << -1/far everywhere
        gaussians = encoder(context, global_step=0)
        gaussians.means[..., 2].mean().backward()  # any loss that wants the Gaussians nearer
        outputs[clamp] = (gaussians.means.detach(), encoder.depth_predictor.to_disparity[2].bias.grad[0])
    means_hard, delta_grad_hard = outputs["hard"]
    means_st, delta_grad_st = outputs["straight_through"]
    torch.testing.assert_close(means_st, means_hard, rtol=0, atol=0)
    far = context["far"][0, 0].item()
    camera_z = means_hard[..., 2]  # cameras look down +z from near z = 0; depth is along the ray
    assert camera_z.min() > 0.75 * far  # every Gaussian at the far plane (z = 0.79 far at the corners)
    assert delta_grad_hard == 0
    assert delta_grad_st < 0  # z falls as the disparity rises: a descent step raises it, bringing them nearer


def test_disparity_clamp_validated():
    with pytest.raises(ConfigError, match="model.encoder.disparity_clamp"):
        cfg(disparity_clamp="soft")


def test_gaussian_head_hidden_channels_narrows_only_the_head():
    """null keeps the original's head (twice the 84 raw channels at SH degree 4); a width changes its hidden
    layer alone: the same Gaussians come out, every SH coefficient included, and the rest of the encoder keeps its
    parameters (so a checkpoint of the original's layout still loads everywhere but the head)."""
    original, narrow = EncoderCostVolume(cfg()), EncoderCostVolume(cfg(gaussian_head_hidden_channels=16))
    head = original.depth_predictor.to_gaussians
    assert (head[0].out_channels, head[2].in_channels, head[2].out_channels) == (168, 168, 84)
    head = narrow.depth_predictor.to_gaussians
    assert (head[0].out_channels, head[2].in_channels, head[2].out_channels) == (16, 16, 84)
    differing = {k for k, v in original.state_dict().items() if narrow.state_dict()[k].shape != v.shape}
    assert differing == {f"depth_predictor.to_gaussians.{i}.weight" for i in (0, 2)} | {
        "depth_predictor.to_gaussians.0.bias"}
    with torch.no_grad():
        gaussians = narrow.eval()(make_context(1, 2, 16, 16), global_step=0)
    assert gaussians.harmonics.shape == (1, 2 * 16 * 16, 3, 25)
    assert torch.isfinite(gaussians.means).all() and gaussians.harmonics[..., 16:].abs().sum() > 0
    with pytest.raises(ConfigError, match="model.encoder.gaussian_head_hidden_channels"):
        cfg(gaussian_head_hidden_channels=0)


@pytest.mark.parametrize("colour_from_pixel", [False, True])
def test_colour_from_pixel_starts_each_gaussian_at_its_pixel_colour(colour_from_pixel):
    """With the head's output at zero, a Gaussian's colour (SH_C0 * DC + 0.5) is its pixel's colour when
    colour_from_pixel is set, and the original's mid-grey when not; the higher bands stay the head's."""
    encoder = EncoderCostVolume(cfg(gaussian_adapter={"colour_from_pixel": colour_from_pixel})).eval()
    with torch.no_grad():
        encoder.depth_predictor.to_gaussians[2].weight.zero_()
        encoder.depth_predictor.to_gaussians[2].bias.zero_()
        context = make_context(1, 2, 16, 16)
        gaussians = encoder(context, global_step=0)
    colours = SH_C0 * gaussians.harmonics[..., 0] + 0.5
    pixels = rearrange(context["image"], "b v rgb h w -> b (v h w) rgb")
    torch.testing.assert_close(colours, pixels if colour_from_pixel else torch.full_like(pixels, 0.5))
    assert (gaussians.harmonics[..., 1:] == 0).all()


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    grads = []
    context = make_context(1, 2, 16, 16)
    for checkpointing in (True, False):
        torch.manual_seed(0)
        encoder = perturbed(EncoderCostVolume(cfg(gradient_checkpointing=checkpointing,
                                                  transformer_checkpointing=checkpointing)))
        encoder(context, global_step=0).means.mean().backward()
        grads.append([encoder.depth_predictor.corr_refine_net[3].input_blocks[5][1].qkv.weight.grad.clone(),
                      encoder.backbone.transformer.layers[1].cross_attn_ffn.q_proj.weight.grad.clone()])
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_forward_is_finite():
    encoder = perturbed(EncoderCostVolume(cfg())).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        gaussians = encoder(make_context(1, 2, 16, 16), global_step=0)
    for value in (gaussians.means, gaussians.covariances, gaussians.harmonics, gaussians.opacities):
        assert torch.isfinite(value.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="torch.compile of the encoder takes minutes on 2 CPU cores (dynamo tracing alone 66 s, "
                           "aot_eager 101 s); it runs where trainer.compile is meant for, on CUDA")
def test_compiled_encoder_matches_eager():
    """What trainer.compile=true does (`encoder.compile()` in place), against the same encoder run eagerly."""
    encoder = perturbed(EncoderCostVolume(cfg(gradient_checkpointing=False))).cuda().eval()
    context = {key: value.cuda() for key, value in make_context(b=1, v=2, h=64, w=64).items()}
    with torch.no_grad():
        eager = encoder(context, global_step=0)
        encoder.compile()
        compiled = encoder(context, global_step=0)
    for name in ("means", "covariances", "harmonics", "opacities"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name), rtol=2e-3, atol=2e-3)


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
@pytest.mark.parametrize("shift_px", [0, 2])
def test_bf16_autocast_warp_samples_at_exact_positions(shift_px):
    """The cost volume's warp keeps its sampling grid in fp32 under bf16 autocast: a camera moved sideways by
    t at fronto-parallel depth z sees every pixel fx t / z pixels over (0 or 2 here), so the warp must return
    the feature map shifted by whole pixels; a bf16 grid misplaces samples by up to ~0.06 px at 64 px wide."""
    from fabric_mvsplat.model.encoder.cost_volume import warp_to_candidates

    generator = torch.Generator().manual_seed(0)
    n, c, d, h, w = 2, 4, 3, 32, 64
    other = torch.rand(n, c, h, w, generator=generator).bfloat16()
    intrinsics = torch.tensor([[50.0, 0, 31.5], [0, 50.0, 15.5], [0, 0, 1]]).repeat(n, 1, 1)
    pose = torch.eye(4).repeat(n, 1, 1)
    pose[:, 0, 3] = 0.1
    depths = torch.full((n, d, h, w), 2.5) if shift_px else 1 + torch.rand(n, d, h, w, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped = warp_to_candidates(other, intrinsics, pose if shift_px else torch.eye(4).repeat(n, 1, 1), depths)
    expected = torch.zeros(n, c, h, w)
    expected[..., : w - shift_px] = other[..., shift_px:].float()
    assert (warped - expected[:, :, None]).abs().max() < 1e-4


def test_opacity_mapping_schedule():
    encoder = EncoderCostVolume(cfg(opacity_mapping={"initial": 0.0, "final": 1.0, "warm_up": 10}))
    pdf = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(encoder.map_pdf_to_opacity(pdf, 0), pdf)  # exponent 1: identity
    late = encoder.map_pdf_to_opacity(pdf, 100)  # exponent 2
    torch.testing.assert_close(late, 0.5 * (1 - (1 - pdf) ** 2 + pdf**0.5))


def test_data_shim_crops_and_rescales_focal():
    encoder = EncoderCostVolume(cfg())
    views = make_context(1, 2, 36, 52)
    batch = {"context": views, "target": make_context(1, 1, 36, 52), "scene": ["s"]}
    shimmed = encoder.get_data_shim()(batch)
    assert shimmed["context"]["image"].shape[-2:] == (32, 48)
    torch.testing.assert_close(shimmed["context"]["image"], views["image"][..., 2:34, 2:50])
    k, k0 = shimmed["context"]["intrinsics"], views["intrinsics"]
    torch.testing.assert_close(k[..., 0, 0], k0[..., 0, 0] * 52 / 48)
    torch.testing.assert_close(k[..., 1, 1], k0[..., 1, 1] * 36 / 32)
    torch.testing.assert_close(k[..., :2, 2], k0[..., :2, 2])  # principal point kept, as the original
    assert shimmed["target"]["image"].shape[-2:] == (32, 48)


@pytest.mark.parametrize("key, value", [("attention", "flash"), ("cost_volume", "dense")])
def test_attention_and_cost_volume_options_validated(key, value):
    with pytest.raises(ConfigError, match=f"model.encoder.{key}"):
        cfg(**{key: value})


@pytest.mark.isa_sensitive  # a tolerance at float rounding: rerun with the AVX2 kernels
def test_cost_volume_methods_agree_with_gradients():
    """`correlate` swaps the two sums of the original's warp-multiply-sum: same volume, same gradients,
    including samples that fall outside the other view (zero padding) with three views."""
    from fabric_mvsplat.model.encoder.cost_volume import correlation_volume, disparity_candidates

    generator = torch.Generator().manual_seed(0)
    b, v, c, h, w, d = 2, 3, 8, 6, 10, 5
    features = torch.randn(b, v, c, h, w, generator=generator)
    intrinsics = torch.tensor([[0.9, 0.0, 0.5], [0.0, 1.2, 0.5], [0.0, 0.0, 1.0]]).repeat(b, v, 1, 1)
    extrinsics = torch.eye(4).repeat(b, v, 1, 1)
    extrinsics[..., 0, 3] = torch.tensor([-0.4, 0.1, 0.5])
    extrinsics[..., 1, 3] = torch.tensor([0.0, 0.2, -0.1])
    near, far = torch.full((b, v), 1.0), torch.full((b, v), 50.0)
    disparities = disparity_candidates(near, far, d, torch.float32)
    results = {}
    for method in ("warp", "correlate"):
        leaf = features.clone().requires_grad_(True)
        volume = correlation_volume(leaf, intrinsics, extrinsics, disparities, method)
        weights = torch.randn(volume.shape, generator=torch.Generator().manual_seed(1))
        (volume * weights).sum().backward()
        results[method] = volume.detach(), leaf.grad
    assert results["warp"][0].abs().max() > 0.1 and (results["warp"][0] == 0).any()  # real values and off-image samples
    torch.testing.assert_close(results["correlate"][0], results["warp"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["correlate"][1], results["warp"][1], rtol=1e-5, atol=1e-5)


def test_correlate_cost_volume_stays_fp32_under_bf16_autocast():
    """Like the warp path (fp32 grid, fp32 samples), the correlation path must not sample with a bf16 grid
    nor sweep with bf16 relative poses: under autocast it equals the fp32 volume."""
    from fabric_mvsplat.model.encoder.cost_volume import correlation_volume, disparity_candidates

    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 2, 16, 8, 8, generator=generator)
    intrinsics = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]).repeat(1, 2, 1, 1)
    extrinsics = torch.eye(4).repeat(1, 2, 1, 1)
    extrinsics[0, :, 0, 3] = torch.tensor([-0.3, 0.3])
    disparities = disparity_candidates(torch.ones(1, 2), torch.full((1, 2), 50.0), 8, torch.float32)
    reference = correlation_volume(features, intrinsics, extrinsics, disparities, "warp")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        volume = correlation_volume(features, intrinsics, extrinsics, disparities, "correlate")
    assert volume.dtype == torch.float32
    torch.testing.assert_close(volume, reference, rtol=1e-5, atol=1e-5)
