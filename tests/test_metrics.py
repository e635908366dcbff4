import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from fabric_mvsplat.metrics import compute_psnr, compute_ssim


def _reference_ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """Wang et al. SSIM with a Gaussian window (sigma 1.5, 11 px), sample covariance,
    border of 5 px cropped, averaged over pixels and channels: [C, H, W] x2 -> float."""
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    n = 11 * 11
    cov_norm = n / (n - 1)
    scores = []
    for x, y in zip(gt.astype(np.float64), pred.astype(np.float64)):
        blur = lambda a: gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        ux, uy = blur(x), blur(y)
        vx = cov_norm * (blur(x * x) - ux * ux)
        vy = cov_norm * (blur(y * y) - uy * uy)
        vxy = cov_norm * (blur(x * y) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        scores.append(s[5:-5, 5:-5].mean())
    return float(np.mean(scores))


def test_psnr_known_values_and_clipping():
    gt = torch.full((2, 3, 8, 8), 0.5)
    pred = gt.clone()
    pred[0] += 0.1  # mse 0.01 -> 20 dB
    pred[1] = 1.7  # clipped to 1 -> mse 0.25 -> 6.0206 dB
    psnr = compute_psnr(gt, pred)
    assert psnr.shape == (2,)
    assert psnr[0].item() == pytest.approx(20.0, abs=1e-4)
    assert psnr[1].item() == pytest.approx(-10 * math.log10(0.25), abs=1e-4)


def test_psnr_is_per_image_mean_over_channels_and_pixels():
    torch.manual_seed(0)
    gt, pred = torch.rand(3, 3, 5, 7), torch.rand(3, 3, 5, 7)
    expected = [-10 * math.log10(((g - p) ** 2).mean().item()) for g, p in zip(gt, pred)]
    assert compute_psnr(gt, pred).tolist() == pytest.approx(expected, rel=1e-5)


def test_ssim_matches_independent_gaussian_ssim():
    rng = np.random.default_rng(0)
    gt = rng.random((2, 3, 32, 40)).astype(np.float32)
    pred = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
    ssim = compute_ssim(torch.from_numpy(gt), torch.from_numpy(pred))
    assert ssim.shape == (2,)
    for i in range(2):
        assert ssim[i].item() == pytest.approx(_reference_ssim(gt[i], pred[i]), abs=1e-5)


def test_ssim_identical_is_one_and_decreases_with_noise():
    torch.manual_seed(1)
    gt = torch.rand(1, 3, 24, 24)
    noisy = [(gt + s * torch.randn_like(gt)).clip(0, 1) for s in (0.02, 0.1, 0.3)]
    assert compute_ssim(gt, gt).item() == pytest.approx(1.0, abs=1e-6)
    values = [compute_ssim(gt, n).item() for n in noisy]
    assert values[0] > values[1] > values[2]


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        compute_psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
