"""benchmarks/gsplat_conventions.py's rasterizer variants differ exactly where their conventions do."""

import pytest
import torch

from fabric_mvsplat.model.decoder import render
from fabric_mvsplat.types import Gaussians

pytest.importorskip("gsplat", minversion="1.5")
from benchmarks.gsplat_conventions import VARIANTS, rasterizer  # noqa: E402

SIZE = 96  # six 16-px tiles per axis


def one_gaussian(u: float, sigma_px: float, opacity: float, v: float = 48.0):
    """A white Gaussian at pixel (u, v) seen from 10 units by a 96-px camera with fx = 96 px."""
    z, f = 10.0, float(SIZE)
    mean = torch.tensor([[[(u - SIZE / 2) * z / f, (v - SIZE / 2) * z / f, z]]])
    scale = sigma_px * z / f
    harmonics = torch.zeros(1, 1, 3, 1)
    harmonics[..., 0] = 0.5 / 0.28209479177387814  # colour 1
    gaussians = Gaussians(mean, torch.eye(3)[None, None] * scale**2, harmonics, torch.tensor([[opacity]]))
    cameras = (torch.eye(4)[None, None], torch.tensor([[[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]]]),
               torch.ones(1, 1), torch.full((1, 1), 100.0))
    return gaussians, cameras


def renders(gaussians, cameras) -> dict[str, torch.Tensor]:
    images = {}
    for variant in VARIANTS:
        with rasterizer(variant) as backend:
            images[variant] = render(gaussians, cameras, (SIZE, SIZE), backend=backend).color[0, 0, 0]
    return images


def test_the_cap_is_gsplats_only_difference_and_the_original_footprint_stops_at_its_tiles():
    # sigma 10 px (10.015 after the 0.3 px^2 dilation) at column 47.5: the original's radius is ceil(3 x 10.015) =
    # 31 around p = 47 (its pixel centres are integers), so its tile rectangle starts at tile floor(16 / 16) = 1;
    # pixel 15 (tile 0), 32 px away, still has alpha 0.98 exp(-32^2 / 200.6) = 0.006 >= 1/255: torch and gsplat
    # light it, the original's footprint does not.
    images = renders(*one_gaussian(u=47.5, sigma_px=10.0, opacity=0.98))
    for variant in ("gsplat", "gsplat_cap_0.99"):
        assert torch.allclose(images[variant], images["torch"], atol=1e-5), variant
    assert images["torch"][48, 15] > 1 / 255 and images["inria_footprint"][48, 15] == 0
    reached = (slice(16, 80), slice(16, 80))  # its tiles 1-4 on both axes: there it is the same Gaussian
    assert torch.allclose(images["inria_footprint"][reached], images["torch"][reached], atol=1e-5)
    assert images["torch"][48, 80] > 1 / 255 and images["inria_footprint"][48, 80] == 0  # and tile 5 on the right

    # Nearly opaque: alpha is capped at 0.999 by gsplat, at 0.99 by the others.
    images = renders(*one_gaussian(u=48.5, sigma_px=2.0, opacity=0.9995, v=48.5))  # on pixel (48, 48)'s centre
    assert images["torch"][48, 48].item() == pytest.approx(0.99, abs=1e-5)
    assert images["gsplat"][48, 48].item() == pytest.approx(0.999, abs=1e-5)
    for variant in ("gsplat_cap_0.99", "inria_footprint"):
        assert images[variant][48, 48].item() == pytest.approx(0.99, abs=1e-5), variant
