"""Parity against the original MVSplat's golden tensors (../shared/golden beside the checkout)."""

import shutil
from pathlib import Path

import pytest
from conftest import SHARED
import torch

from fabric_mvsplat import parity

GOLDEN = SHARED / "golden"
FOLDERS = ["encoder_small", "encoder_small_perturbed", "encoder_small_b2v3", "gaussian_adapter"]


def golden_folder(name: str) -> Path:
    folder = GOLDEN / name
    if not folder.is_dir():
        pytest.skip(f"golden vectors not found at {folder} (../shared/golden beside the checkout)")
    return folder


@pytest.mark.parametrize("name", FOLDERS)
def test_golden_folder_passes_with_intermediates(name):
    rows = parity.check_folder(golden_folder(name), intermediates=True)
    failed = [r for r in rows if not r.ok]
    assert rows and not failed, parity.format_table(golden_folder(name), failed)
    if name.startswith("encoder"):
        names = {r.name for r in rows}
        assert {"gaussians.means", "gaussians.covariances", "gaussians.harmonics", "gaussians.opacities"} <= names
        assert any(n.startswith("[int] backbone.out.0") for n in names)


def test_command_exit_status(tmp_path, capsys):
    source = golden_folder("encoder_small")
    assert parity.main([str(source)]) == 0
    assert "gaussians.means" in capsys.readouterr().out

    # The same folder with one weight nudged must fail: the check can see a wrong model.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "inputs.pt", "outputs.pt"):
        shutil.copy(source / name, broken / name)
    state = torch.load(source / "state_dict.pt", weights_only=True)
    state["depth_predictor.to_disparity.2.bias"] = state["depth_predictor.to_disparity.2.bias"] + 0.05
    torch.save(state, broken / "state_dict.pt")
    assert parity.main([str(broken)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_not_a_parity_folder(tmp_path, capsys):
    assert parity.main([str(tmp_path)]) == 1
    assert "not a parity folder" in capsys.readouterr().err
