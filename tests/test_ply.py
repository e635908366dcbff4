import numpy as np
import pytest
import torch

from fabric_mvsplat.model.ply_export import (
    covariance_to_scale_rotation,
    export_ply,
    ply_attribute_names,
    read_ply,
    rotation_to_quaternion,
)
from fabric_mvsplat.model.sh_convert import mvsplat_to_standard_sh
from fabric_mvsplat.types import Gaussians


def quaternion_to_rotation(q: torch.Tensor) -> torch.Tensor:
    """3DGS's build_rotation: [N, 4] wxyz (normalised) -> [N, 3, 3]."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(-1, 3, 3)


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return quaternion_to_rotation(q)


def random_gaussians(batch: int, count: int, d_sh: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    rotations = random_rotations(batch * count, g)
    scales = torch.exp(torch.empty(batch * count, 3, dtype=torch.float64).uniform_(-5, 0, generator=g))
    covariances = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(-1, -2)
    return Gaussians(
        means=torch.randn(batch, count, 3, generator=g),
        covariances=covariances.view(batch, count, 3, 3).float(),
        harmonics=torch.randn(batch, count, 3, d_sh, generator=g),
        opacities=torch.rand(batch, count, generator=g),
    )


def standard_sh_from_ply(ply: dict[str, np.ndarray]) -> torch.Tensor:
    """PLY f_dc / f_rest (channel-major, as 3DGS's load_ply reads them) -> [N, 16, 3]."""
    n = len(ply["x"])
    dc = np.stack([ply[f"f_dc_{i}"] for i in range(3)], axis=-1)[:, None, :]  # [N, 1, 3]
    rest = np.stack([ply[f"f_rest_{i}"] for i in range(45)], axis=-1).reshape(n, 3, 15)
    return torch.from_numpy(np.concatenate([dc, rest.transpose(0, 2, 1)], axis=1)).double()


def test_round_trip_values(tmp_path):
    gaussians = random_gaussians(batch=2, count=64, d_sh=25)
    path = tmp_path / "scene" / "gaussians.ply"
    export_ply(gaussians, path, batch_index=1)
    ply = read_ply(path)

    assert list(ply) == ply_attribute_names()
    assert len(ply_attribute_names()) == 3 + 3 + 3 + 45 + 1 + 3 + 4
    assert all(v.dtype == np.float32 and v.shape == (64,) for v in ply.values())

    means = np.stack([ply["x"], ply["y"], ply["z"]], axis=-1)
    np.testing.assert_allclose(means, gaussians.means[1].numpy(), atol=1e-6)
    assert all((ply[n] == 0).all() for n in ("nx", "ny", "nz"))
    dc = np.stack([ply[f"f_dc_{i}"] for i in range(3)], axis=-1)
    np.testing.assert_allclose(dc, gaussians.harmonics[1, :, :, 0].numpy(), atol=1e-6)
    opacity = 1 / (1 + np.exp(-ply["opacity"].astype(np.float64)))
    np.testing.assert_allclose(opacity, gaussians.opacities[1].numpy(), atol=1e-5)

    # 3DGS rebuilds the covariance as R(q) diag(exp(s))^2 R(q)^T
    quaternions = torch.from_numpy(np.stack([ply[f"rot_{i}"] for i in range(4)], axis=-1)).double()
    np.testing.assert_allclose(quaternions.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    scales = torch.from_numpy(np.stack([ply[f"scale_{i}"] for i in range(3)], axis=-1)).double().exp()
    rotations = quaternion_to_rotation(quaternions)
    rebuilt = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(-1, -2)
    original = gaussians.covariances[1].double()
    assert (rebuilt - original).abs().max() <= 1e-5 * original.abs().amax(dim=(-1, -2)).max()


def test_exported_sh_renders_like_mvsplat_convention(tmp_path):
    # independent reference: gsplat's pure-torch SH, which evaluates the standard 3DGS basis
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    gaussians = random_gaussians(batch=1, count=32, d_sh=25, seed=1)
    export_ply(gaussians, tmp_path / "g.ply")
    exported = standard_sh_from_ply(read_ply(tmp_path / "g.ply"))  # [N, 16, 3]

    g = torch.Generator().manual_seed(2)
    directions = torch.nn.functional.normalize(torch.randn(32, 3, generator=g, dtype=torch.float64), dim=-1)
    permuted = directions[:, [2, 0, 1]]  # MVSplat's rasterizer evaluates at (d_z, d_x, d_y)
    original = gaussians.harmonics[0, :, :, :16].double().transpose(1, 2)  # [N, 16, 3]
    mvsplat_colour = torch_impl._spherical_harmonics(3, permuted, original)
    viewer_colour = torch_impl._spherical_harmonics(3, directions, exported)
    torch.testing.assert_close(viewer_colour, mvsplat_colour, atol=1e-5, rtol=1e-5)
    # the conversion is not the identity (the check above is not vacuous)
    assert not torch.allclose(torch_impl._spherical_harmonics(3, directions, original), mvsplat_colour, atol=1e-2)


def test_low_sh_degree_is_zero_padded():
    harmonics = torch.randn(5, 3, 4)
    standard = mvsplat_to_standard_sh(harmonics)
    assert standard.shape == (5, 3, 16)
    assert (standard[..., 4:] == 0).all()
    torch.testing.assert_close(standard[..., 0], harmonics[..., 0])
    with pytest.raises(ValueError, match="degree"):
        mvsplat_to_standard_sh(torch.randn(5, 3, 7))


def test_scale_rotation_handles_degenerate_and_half_turn_cases():
    half_turn = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # w = 0
    stretched = half_turn @ torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)) @ half_turn.T
    covariances = torch.stack([torch.eye(3, dtype=torch.float64) * 0.04, stretched])
    scales, quaternions = covariance_to_scale_rotation(covariances)
    rotations = quaternion_to_rotation(quaternions)
    rebuilt = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(-1, -2)
    torch.testing.assert_close(rebuilt, covariances)
    torch.testing.assert_close(scales[0], torch.full((3,), 0.2, dtype=torch.float64))

    g = torch.Generator().manual_seed(3)
    rotations = random_rotations(200, g)
    recovered = quaternion_to_rotation(rotation_to_quaternion(rotations))
    torch.testing.assert_close(recovered, rotations)


def test_extreme_opacities_stay_finite(tmp_path):
    gaussians = random_gaussians(batch=1, count=4, d_sh=16)
    gaussians.opacities = torch.tensor([[0.0, 1.0, 0.5, 1e-9]])
    export_ply(gaussians, tmp_path / "g.ply")
    opacity = read_ply(tmp_path / "g.ply")["opacity"]
    assert np.isfinite(opacity).all() and opacity[0] < -10 and opacity[1] > 10 and opacity[2] == 0


def test_batch_index_out_of_range(tmp_path):
    with pytest.raises(IndexError, match="batch_index 2"):
        export_ply(random_gaussians(batch=2, count=3, d_sh=1), tmp_path / "g.ply", batch_index=2)
