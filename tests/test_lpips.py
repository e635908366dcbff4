import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fabric_mvsplat.metrics.lpips import LPIPS, load_lpips
from lpips_test_weights import write_lpips_test_weights


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lpips_weights")
    write_lpips_test_weights(directory, seed=3)
    return directory


@pytest.fixture(scope="module")
def lpips(weights_dir):
    return load_lpips(weights_dir)


# Published definitions, not the implementation's constants:
# - torchvision's ImageNet normalisation. LPIPS's scaling layer is the same map written for inputs in [-1, 1]
#   (its shift is 2 * mean - 1, its scale 2 * std), so (x - mean) / std on [0, 1] inputs is the reference.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# - VGG16 is configuration D of Simonyan & Zisserman (2015), Table 1: five blocks of 3x3 convs, each followed
#   by a 2x2 max-pool; torchvision's `features` holds conv, ReLU per conv and one module per pool.
VGG16_BLOCKS = ([64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512])
# - LPIPS (Zhang et al. 2018) reads the last ReLU of each block: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.


def reference_lpips(weights_dir, pred, gt):
    """Straight-line LPIPS-VGG from the raw weight files: [B,3,H,W] in [0,1] -> [B]."""
    vgg = torch.load(weights_dir / "vgg16.pth", weights_only=True)
    lin = torch.load(weights_dir / "vgg.pth", weights_only=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def features(x):
        x = (x - mean) / std
        taps, index = [], 0  # index: position in torchvision's vgg16.features
        for block, widths in enumerate(VGG16_BLOCKS):
            if block > 0:
                x = F.max_pool2d(x, 2)
                index += 1
            for _ in widths:
                x = F.relu(F.conv2d(x, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], padding=1))
                index += 2
            taps.append(x)
        return taps

    total = torch.zeros(pred.shape[0])
    for k, (a, b) in enumerate(zip(features(pred), features(gt))):
        a = a / (torch.sqrt((a**2).sum(1, keepdim=True)) + 1e-10)
        b = b / (torch.sqrt((b**2).sum(1, keepdim=True)) + 1e-10)
        w = lin[f"lin{k}.model.1.weight"]  # [1, C, 1, 1]
        total += ((a - b) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def test_matches_reference_computation(weights_dir, lpips):
    torch.manual_seed(0)
    gt = torch.rand(2, 3, 32, 48)
    pred = (gt + 0.2 * torch.randn_like(gt)).clip(0, 1)
    ours = lpips(pred, gt, normalize=True)
    assert ours.shape == (2,)
    expected = reference_lpips(weights_dir, pred, gt)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert (ours > 0).all()


def test_zero_for_identical_and_monotone_in_difference(lpips):
    torch.manual_seed(1)
    gt = torch.rand(1, 3, 32, 32)
    noise = torch.randn_like(gt)
    assert lpips(gt, gt).item() == pytest.approx(0.0, abs=1e-7)
    values = [lpips((gt + s * noise).clip(0, 1), gt).item() for s in (0.02, 0.1, 0.4)]
    assert values[0] < values[1] < values[2]


def test_normalize_false_takes_minus_one_to_one(lpips):
    torch.manual_seed(2)
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(lpips(a, b, normalize=True), lpips(2 * a - 1, 2 * b - 1, normalize=False))


def test_weights_are_frozen_and_never_checkpointed(lpips):
    assert len(lpips.state_dict()) == 0
    assert list(lpips.parameters()) == []
    assert all(not b.requires_grad for b in lpips.buffers())
    parent = nn.Module()
    parent.net = nn.Linear(2, 2)
    parent.lpips = lpips
    assert set(parent.state_dict()) == {"net.weight", "net.bias"}
    # gradients still reach the prediction (it is a loss)
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    lpips(pred, torch.rand(1, 3, 16, 16)).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_missing_files_name_path_keys_and_source(tmp_path, weights_dir):
    with pytest.raises(FileNotFoundError) as error:
        load_lpips(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "vgg16.pth") in message
    assert "loss.lpips.weights" in message and "test.lpips_weights" in message
    assert "vgg16-397923af.pth" in message

    # torchvision's original file name is accepted; now only the heads are missing
    shutil.copy(weights_dir / "vgg16.pth", tmp_path / "vgg16-397923af.pth")
    with pytest.raises(FileNotFoundError) as error:
        load_lpips(tmp_path)
    assert str(tmp_path / "vgg.pth") in str(error.value)
    assert "lpips/weights/v0.1/vgg.pth" in str(error.value)

    shutil.copy(weights_dir / "vgg.pth", tmp_path / "vgg.pth")
    assert load_lpips(tmp_path).is_loaded


def test_wrong_tensor_shape_names_file_and_key(tmp_path, weights_dir):
    shutil.copy(weights_dir / "vgg16.pth", tmp_path / "vgg16.pth")
    lin = torch.load(weights_dir / "vgg.pth", weights_only=True)
    lin["lin2.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(lin, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match=r"vgg\.pth.*lin2\.model\.1\.weight"):
        load_lpips(tmp_path)


def test_unloaded_module_and_tiny_images_are_rejected(lpips):
    with pytest.raises(RuntimeError, match="load_lpips"):
        LPIPS()(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
