"""Strict encoder weight loading and the UniMatch backbone init."""

import pytest
import torch

from fabric_mvsplat.config import from_dict
from fabric_mvsplat.errors import CheckpointError, WeightsError
from fabric_mvsplat.model.encoder import (
    EncoderCostVolume, EncoderCostVolumeCfg, load_encoder_weights, load_unimatch_backbone)

SMALL = dict(d_feature=64, num_depth_candidates=16, costvolume_unet_feat_dim=64, costvolume_unet_attn_res=[4],
             depth_unet_feat_dim=32, depth_unet_attn_res=[16], depth_unet_channel_mult=[1, 1, 1, 1, 1],
             unimatch_weights_path=None)


def encoder(**overrides) -> EncoderCostVolume:
    return EncoderCostVolume(from_dict(EncoderCostVolumeCfg, {**SMALL, **overrides}, "model.encoder"))


def test_lightning_layout_loads_and_ignores_other_prefixes():
    source, target = encoder(), encoder()
    ckpt_state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    ckpt_state["decoder.background_color"] = torch.zeros(3)  # not an encoder key: ignored
    load_encoder_weights(target, ckpt_state, "run/checkpoints/last.ckpt")
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_plain_layout_loads():
    source, target = encoder(), encoder()
    load_encoder_weights(target, source.state_dict(), "state_dict.pt")
    assert torch.equal(target.backbone.backbone.conv1.weight, source.backbone.backbone.conv1.weight)


def test_mismatch_names_missing_unexpected_and_wrong_shaped_keys():
    state = dict(encoder().state_dict())
    del state["depth_predictor.to_disparity.2.bias"]
    state["depth_predictor.corr_project.weight"] = torch.zeros(1)
    state["depth_predictor.proj_feature.bias"] = torch.zeros(7)
    target = encoder()
    before = target.depth_predictor.proj_feature.bias.clone()
    with pytest.raises(CheckpointError) as error:
        load_encoder_weights(target, state, "acid.ckpt")
    message = str(error.value)
    assert "acid.ckpt" in message
    assert "missing (1): depth_predictor.to_disparity.2.bias" in message
    assert "unexpected (1): depth_predictor.corr_project.weight" in message
    assert "depth_predictor.proj_feature.bias: file [7] vs model [32]" in message
    assert "\n" not in message
    assert torch.equal(target.depth_predictor.proj_feature.bias, before)  # nothing half-loaded


def test_ablation_checkpoint_into_full_model_is_rejected():
    ablation = encoder(wo_depth_refine=True).state_dict()
    with pytest.raises(CheckpointError, match="refine_unet.weight"):
        load_encoder_weights(encoder(), {f"encoder.{k}": v for k, v in ablation.items()}, "re10k_base.ckpt")


def unimatch_file(tmp_path, backbone_state, extra=True):
    model = {k: v.clone() + 1.0 for k, v in backbone_state.items()}  # UniMatch names = backbone.* / transformer.*
    if extra:
        model["feature_flow_attn.q_proj.weight"] = torch.zeros(4, 4)
        model["upsampler.0.weight"] = torch.zeros(2)
    path = tmp_path / "gmdepth.pth"
    torch.save({"model": model, "optimizer": {}}, path)
    return path, model


def test_unimatch_init_loads_backbone_only(tmp_path):
    target = encoder()
    depth_before = {k: v.clone() for k, v in target.depth_predictor.state_dict().items()}
    path, model = unimatch_file(tmp_path, target.backbone.state_dict())
    load_unimatch_backbone(target, str(path))
    for k, v in target.backbone.state_dict().items():
        assert torch.equal(v, model[k]), k
    for k, v in target.depth_predictor.state_dict().items():
        assert torch.equal(v, depth_before[k]), k


def test_unimatch_init_is_strict(tmp_path):
    target = encoder()
    state = dict(target.backbone.state_dict())
    del state["transformer.layers.5.cross_attn_ffn.norm2.bias"]
    path, _ = unimatch_file(tmp_path, state)
    with pytest.raises(WeightsError, match="transformer.layers.5.cross_attn_ffn.norm2.bias"):
        load_unimatch_backbone(target, str(path))


def test_unimatch_init_without_cross_attention_skips_ffn(tmp_path):
    # UniMatch has cross_attn_ffn, not a self_attn FFN: those stay random (non-strict, as the original).
    full_backbone = encoder().backbone.state_dict()
    target = encoder(wo_backbone_cross_attn=True)
    ffn_before = target.backbone.transformer.layers[0].self_attn.mlp[0].weight.clone()
    path, model = unimatch_file(tmp_path, full_backbone)
    load_unimatch_backbone(target, str(path))
    assert torch.equal(target.backbone.backbone.conv1.weight, model["backbone.conv1.weight"])
    assert torch.equal(target.backbone.transformer.layers[0].self_attn.mlp[0].weight, ffn_before)


def test_unimatch_missing_file_explains_null(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_unimatch_backbone(encoder(), str(tmp_path / "nope.pth"))
    assert "model.encoder.unimatch_weights_path" in str(error.value)
    assert "null" in str(error.value)
