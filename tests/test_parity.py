"""Parity against the original MVSplat's golden tensors (../shared/golden beside the checkout)."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import SHARED
import torch

from fabric_mvsplat import parity

# The final outputs' rounding depends on the CPU's vector kernels: .ci/run runs this file again with AVX2 kernels.
pytestmark = pytest.mark.isa_sensitive

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


@pytest.mark.parametrize("options", [{"attention": "original", "cost_volume": "warp"},
                                     {"attention": "sdpa", "cost_volume": "correlate"}])
@pytest.mark.parametrize("name", ["encoder_small", "encoder_small_b2v3"])
def test_golden_folder_passes_with_each_arithmetic(name, options):
    """The original's explicit attention / warped cost volume and the fast paths all meet the tolerances."""
    rows = parity.check_folder(golden_folder(name), intermediates=True, options=options)
    failed = [r for r in rows if not r.ok]
    assert rows and not failed, parity.format_table(golden_folder(name), failed)


def test_command_exit_status(tmp_path, capsys):
    source = golden_folder("encoder_small")
    assert parity.main([str(source)]) == 0
    out = capsys.readouterr().out
    assert "gaussians.means" in out
    # It says which golden file it compared with and which CPU kernels this process runs.
    kernels = parity.cpu_kernels()
    used = parity.golden_outputs_file(source, kernels).name
    assert f"golden: {used} (CPU kernels: ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN " in out
    assert f"CPU kernels: {kernels.describe()}" in out.splitlines()[0]

    # The same folder with one weight nudged must fail, against either CPU's golden outputs: the check can see a
    # wrong model.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "inputs.pt", "outputs.pt", "outputs_avx2.pt"):
        shutil.copy(source / name, broken / name)
    state = torch.load(source / "state_dict.pt", weights_only=True)
    state["depth_predictor.to_disparity.2.bias"] = state["depth_predictor.to_disparity.2.bias"] + 0.05
    torch.save(state, broken / "state_dict.pt")
    assert parity.main([str(broken)]) == 1
    assert "FAIL" in capsys.readouterr().out
    for onednn in ("AVX512", "AVX2"):
        rows = parity.check_folder(broken, kernels=parity.CpuKernels("AVX2", onednn))
        assert any(not r.ok for r in rows if r.name.startswith("gaussians.")), onednn


def test_golden_file_follows_the_convolution_kernels(tmp_path):
    """outputs_avx2.pt where the convolutions run AVX2 code and the folder has it; outputs.pt otherwise."""
    for name in ("outputs.pt", "outputs_avx2.pt"):
        (tmp_path / name).write_bytes(b"")
    chosen = {(aten, onednn): parity.golden_outputs_file(tmp_path, parity.CpuKernels(aten, onednn)).name
              for aten in ("AVX512", "AVX2") for onednn in ("AVX512", "AVX2", "DEFAULT")}
    assert chosen == {("AVX512", "AVX512"): "outputs.pt", ("AVX512", "AVX2"): "outputs_avx2.pt",
                      ("AVX512", "DEFAULT"): "outputs.pt", ("AVX2", "AVX512"): "outputs.pt",
                      ("AVX2", "AVX2"): "outputs_avx2.pt", ("AVX2", "DEFAULT"): "outputs.pt"}
    (tmp_path / "outputs_avx2.pt").unlink()  # a folder made on one CPU only
    assert parity.golden_outputs_file(tmp_path, parity.CpuKernels("AVX2", "AVX2")).name == "outputs.pt"


@pytest.mark.parametrize("avx512", [True, False])
def test_onednn_isa_from_cpu_and_cap(monkeypatch, avx512):
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    best = "AVX512" if avx512 else "AVX2"
    assert parity.onednn_isa({}) == best
    assert parity.onednn_isa({"ONEDNN_MAX_CPU_ISA": "ALL"}) == best
    assert parity.onednn_isa({"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}) == best
    assert parity.onednn_isa({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "AVX2"
    assert parity.onednn_isa({"DNNL_MAX_CPU_ISA": "AVX2_VNNI"}) == "AVX2"
    assert parity.onednn_isa({"ONEDNN_MAX_CPU_ISA": "SSE41"}) == "DEFAULT"
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    if not avx512:
        assert parity.onednn_isa({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "DEFAULT"


@pytest.mark.skipif(not GOLDEN.joinpath("encoder_small", "outputs_avx2.pt").is_file(), reason="no outputs_avx2.pt")
def test_avx2_golden_outputs_hold_what_outputs_pt_holds():
    """outputs_avx2.pt is read like outputs.pt: the same entries and shapes, so either file checks everything."""
    for name in FOLDERS[:3]:
        main = torch.load(GOLDEN / name / "outputs.pt", weights_only=True)
        avx2 = torch.load(GOLDEN / name / "outputs_avx2.pt", weights_only=True)
        for group in ("gaussians", "visualization_dump", "depth_predictor"):
            assert {k: v.shape for k, v in avx2[group].items()} == {k: v.shape for k, v in main[group].items()}
        assert avx2["cpu_capability"] == "AVX2"


def test_not_a_parity_folder(tmp_path, capsys):
    assert parity.main([str(tmp_path)]) == 1
    assert "not a parity folder" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY", "").lower() != "avx2" or not torch.cpu._is_avx2_supported(),
                    reason="only under ATEN_CPU_CAPABILITY=avx2 (.ci/run's second pass)")
def test_avx2_switch_stands_for_an_avx2_cpu():
    """The AVX2 pass checks against outputs_avx2.pt: conftest.py caps the convolutions (oneDNN) at AVX2 as well."""
    assert parity.cpu_kernels() == parity.CpuKernels("AVX2", "AVX2")
    assert parity.golden_outputs_file(golden_folder("encoder_small"), parity.cpu_kernels()).name == "outputs_avx2.pt"
