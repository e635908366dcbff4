"""`fabric_mvsplat.view` in a real headless browser: Debian's Chromium (installed by .ci/run) loads the served page,
renders the splats with WebGL on the CPU (SwiftShader), and its screenshot differs at the canvas centre from the
same scene with transparent splats; Ctrl-C stops the server with exit code 0."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from PIL import Image

from fabric_mvsplat.model.ply_export import export_ply
from fabric_mvsplat.types import Gaussians

pytest.importorskip("viser", reason="the viewer extra: pip install -e '.[viewer]' (the dev extra includes it)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (.ci/run installs Debian's chromium)")
# Flags that run Chromium headless as root in a container, with WebGL on SwiftShader (no GPU).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--window-size=800,600"]
# Virtual milliseconds headless Chromium waits before its screenshot, per try: the splats arrive over a websocket
# in real time, so on a loaded machine (CI beside two training runs) the first budgets can run out before them.
VIRTUAL_TIME_BUDGETS = (15_000, 30_000, 60_000, 120_000)


def output_folder(folder: Path, opacity: float) -> Path:
    """A render output folder by hand: a 48x48 grid of red-to-green splats 4 units in front of one camera (and a
    second camera beside it), in the files `fabric_mvsplat.render` writes (gaussians.ply, scene.json)."""
    rows, cols = torch.meshgrid(torch.linspace(-1.5, 1.5, 48), torch.linspace(-1.5, 1.5, 48), indexing="ij")
    means = torch.stack([cols.flatten(), rows.flatten(), torch.full((48 * 48,), 4.0)], -1)[None]
    covariances = (torch.eye(3) * 0.04 ** 2).expand(1, 48 * 48, 3, 3).clone()
    colour = torch.stack([(cols.flatten() + 1.5) / 3, (rows.flatten() + 1.5) / 3, torch.full((48 * 48,), 0.2)], -1)
    harmonics = torch.zeros(1, 48 * 48, 3, 25)
    harmonics[..., 0] = (colour - 0.5) / 0.28209479177387814
    export_ply(Gaussians(means, covariances, harmonics, torch.full((1, 48 * 48), opacity)), folder / "gaussians.ply")
    k = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]
    cameras = []
    for name, x in (("left.png", 0.0), ("right.png", 0.5)):
        c2w = torch.eye(4)
        c2w[0, 3] = x
        cameras.append({"name": name, "c2w": c2w.tolist(), "K": k})
    (folder / "scene.json").write_text(json.dumps({"image_shape": [32, 32], "scale": 0.5, "near": 1.0, "far": 20.0,
                                                   "context": cameras}))
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_ctrl_c() -> None:
    """In the viewer's child process before exec: SIGINT at its default and unblocked, as in a terminal. A child
    inherits an ignored or blocked SIGINT, and a pytest-xdist worker of the full suite can have one (CI saw the
    viewer never stop after Ctrl-C there; a parent that ignores SIGINT reproduces it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def serve_and_screenshot(folder: Path, shot: Path, tries: int = 1) -> str:
    """Start the viewer, load its URL, take a screenshot, stop it with Ctrl-C; returns the viewer's output.

    tries > 1 retakes a screenshot whose centre is still uniform, each time with a longer virtual-time budget: on a
    loaded machine the splats can reach the page after headless Chromium's budget has run out, leaving only the
    background."""
    port = free_port()
    viewer = subprocess.Popen([sys.executable, "-m", "fabric_mvsplat.view", str(folder), "--port", str(port)],
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=default_ctrl_c)
    try:
        lines, url = [], f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            line = viewer.stdout.readline()
            lines.append(line)
            if f"open {url}" in line or not line:
                break
        assert any(f"open {url}" in line for line in lines), "".join(lines)
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        for budget in VIRTUAL_TIME_BUDGETS[:tries]:
            with tempfile.TemporaryDirectory() as profile:
                result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--virtual-time-budget={budget}",
                                         f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                                        capture_output=True, text=True, timeout=300)
            assert shot.is_file(), result.stderr[-2000:]
            if centre(shot).std() > 10:
                break
        viewer.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            output, _ = viewer.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            viewer.kill()
            raise AssertionError("no exit 60 s after Ctrl-C; the viewer printed:\n" + "".join(lines)
                                 + viewer.communicate()[0]) from None
        assert viewer.returncode == 0, output
        return "".join(lines) + output
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()


def centre(path: Path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("RGB")).astype(float)
    height, width, _ = image.shape
    return image[height // 2 - 60: height // 2 + 60, width // 2 - 60: width // 2 + 60]


def test_browser_shows_the_splats(tmp_path):
    scene = output_folder((tmp_path / "scene"), opacity=0.99)
    empty = output_folder((tmp_path / "empty"), opacity=1e-4)
    output = serve_and_screenshot(scene, tmp_path / "scene.png", tries=len(VIRTUAL_TIME_BUDGETS))
    assert f"viewer: {48 * 48:,} Gaussians, 2 context camera(s)" in output and "viewer: stopped" in output
    serve_and_screenshot(empty, tmp_path / "empty.png")
    splats, nothing = centre(tmp_path / "scene.png"), centre(tmp_path / "empty.png")
    assert np.abs(splats - nothing).mean() > 20, np.abs(splats - nothing).mean()
    # The splats' colours: red grows to the right, green downwards (OpenCV axes, seen from the first camera).
    assert splats.std() > 10


def test_viewer_refuses_a_file_that_is_not_a_ply(tmp_path):
    (tmp_path / "notes.ply").write_text("not a ply")
    result = subprocess.run([sys.executable, "-m", "fabric_mvsplat.view", str(tmp_path / "notes.ply")],
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "notes.ply cannot be read" in result.stderr
