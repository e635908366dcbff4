"""The loop-level debugging tools (docs/debugging.md): the hang watchdog on a real 2-rank torchrun, the replay of
a diverged step, bit-identical deterministic runs, mode=inspect and the health histograms in TensorBoard."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import demo_overrides, read_events, run_train, subprocess_env
from loop_fixtures import compose_cfg, tiny_cfg, train_tiny

TESTS = Path(__file__).resolve().parent


def tiny_process(output_dir: Path, keys: dict, nproc: int = 1) -> subprocess.CompletedProcess:
    """tests/loop_fixtures.py's whole training process with the tiny model (under torchrun when nproc > 1)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**subprocess_env(), "PYTHONPATH": f"{TESTS.parent}:{TESTS}"}
    return subprocess.run([*launcher, str(TESTS / "loop_fixtures.py"), "tiny", str(output_dir), json.dumps(keys), "0"],
                          capture_output=True, text=True, env=env, timeout=300)


# ------------------------------------------------------------------------------------------------ watchdog
def test_watchdog_names_the_stalled_rank_and_where_each_rank_waits(tmp_path):
    run = tmp_path / "run"
    keys = {"trainer.devices": "auto", "trainer.max_steps": 4, "debug.watchdog.timeout": 3,
            "debug.stall": "{rank:1,step:2,seconds:12}"}
    result = tiny_process(run, keys, nproc=2)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]  # a slow step is not an error: the run waited and finished
    lines = [line for line in output.splitlines() if "watchdog:" in line]
    assert any("training step 2 has taken" in line for line in lines), output[-4000:]
    # Rank 1 sleeps in the stall; rank 0 waits in the collective the loop reaches next.
    [rank1] = [line for line in lines if "watchdog: rank 1:" in line]
    assert "main thread waits in stall_if_asked (fabric_mvsplat/debug/watchdog.py:" in rank1
    [rank0] = [line for line in lines if "watchdog: rank 0:" in line]
    assert "all_reduce" in rank0 and "called from signals_and (fabric_mvsplat/loop.py:" in rank0, rank0
    assert any("progress again after" in line for line in lines)
    for rank in (0, 1):  # every rank's file holds every thread's stack
        text = (run / "hang" / f"rank_{rank}.txt").read_text()
        assert text.startswith(f"hang 1: rank {rank} of 2") and "--- thread MainThread" in text
    assert "time.sleep" in (run / "hang" / "rank_1.txt").read_text() or "stall_if_asked" in (
        run / "hang" / "rank_1.txt").read_text()


def test_watchdog_exit_on_hang_ends_the_process(tmp_path):
    keys = {"trainer.max_steps": 4, "debug.watchdog.enabled": True, "debug.watchdog.timeout": 2,
            "debug.watchdog.exit_on_hang": True, "debug.stall": "{rank:0,step:1,seconds:120}"}
    result = tiny_process(tmp_path, keys)
    assert result.returncode == 124, result.stderr[-3000:]
    assert "watchdog: rank 0: main thread waits in stall_if_asked" in result.stderr
    assert "ending the process" in result.stderr


def test_watchdog_is_on_by_default_only_for_several_processes():
    from fabric_mvsplat.debug.watchdog import Watchdog, watchdog_enabled

    cfg = tiny_cfg().debug.watchdog
    assert cfg.enabled is None and not watchdog_enabled(cfg, 1) and watchdog_enabled(cfg, 2)
    # The automatic limit: 3 x min_timeout until 3 steps are measured, then max(min_timeout, 20 x median step).
    watchdog = Watchdog(cfg, Path("."), 0, 1)
    assert watchdog.limit() == 900
    watchdog.step_seconds = [1.0, 30.0, 31.0]
    assert watchdog.limit() == 600


@pytest.mark.parametrize("stall, named", [("{rank:-1,step:2,seconds:5}", "'debug.stall.rank' = -1"),
                                           ("{rank:0,step:-2,seconds:5}", "'debug.stall.step' = -2"),
                                           ("{rank:0,step:2,seconds:0}", "'debug.stall.seconds' = 0")])
def test_a_wrong_stall_names_its_key_and_value(stall, named):
    from fabric_mvsplat.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(named)):
        compose_cfg([f"debug.stall={stall}"])


# -------------------------------------------------------------------------------------------------- replay
def test_replay_command_reproduces_a_diverged_step_of_the_real_model(synthetic_root, tmp_path):
    """An exploding learning rate on the real model diverges: its gradients turn non-finite, or the Gaussians
    leave every view (a loss without a graph), depending on the CPU's kernels. The printed command, run as printed,
    replays that step with the same scenes and the same failure; for a NaN, anomaly detection names the operation."""
    run = tmp_path / "run"
    args = demo_overrides(synthetic_root, f"output_dir={run}", "optimizer.lr=1", "trainer.max_steps=6",
                          "checkpointing.every_n_train_steps=1", "trainer.val_check_interval=null")
    result = run_train(args, cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    graphless = re.search(r"at global step (\d+) does not require grad on rank\(s\) \[0\] \(scenes: rank 0: (\[.*?\])\)",
                          result.stderr)
    gradients = re.search(r"non-finite gradients \(norm before clipping: (\w+)\) at global step (\d+); "
                          r"the step's scenes: rank 0: (\[.*?\])", result.stderr)
    assert graphless or gradients, result.stderr[-3000:]
    step, scenes = (int(graphless.group(1)), graphless.group(2)) if graphless else \
        (int(gradients.group(2)), gradients.group(3))
    command = result.stderr.split(f"replay step {step} under anomaly detection")[1].splitlines()[1].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "fabric_mvsplat.train"]
    assert f"debug.replay_step={step}" in argv and f"output_dir={run / f'replay_step_{step}'}" in argv
    assert f"checkpointing.load={run / 'checkpoints' / f'epoch_0-step_{step}.ckpt'}" in argv

    replayed = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                              text=True, timeout=600)
    assert replayed.returncode == 1, replayed.stderr[-3000:]
    assert f"replay: step {step}: scenes {scenes}: loss" in replayed.stderr
    if graphless:
        assert f"at global step {step} does not require grad" in replayed.stderr
        assert f"replay: step {step} diverged again: reproduced" in replayed.stderr
    else:  # anomaly detection stops the backward that made the NaN, naming its operation
        assert re.search(r"Function '\w+Backward\d*' returned nan values", replayed.stderr), replayed.stderr[-3000:]
    assert not (run / f"replay_step_{step}" / "checkpoints").exists()  # a replay saves nothing


def test_replay_reproduces_a_non_finite_loss_and_anomaly_detection_names_the_operation(tmp_path, capfd):
    """An exploding learning rate on the tiny model overflows the loss at step 1; the replay command's settings
    rerun step 1 from the checkpoint before it: the same scenes, the same non-finite value, and anomaly
    detection names the backward operation that made the NaN."""
    from fabric_mvsplat.debug.replay import replay_command
    from fabric_mvsplat.loop import TrainingDiverged

    keys = {"trainer.max_steps": 6, "optimizer.lr": 1e30, "checkpointing.every_n_train_steps": 1,
            "trainer.val_check_interval": None, "optimizer.cosine_lr": False, "optimizer.warm_up_steps": 1}
    overrides = [f"{key}={'null' if value is None else value}" for key, value in keys.items()]
    with pytest.raises(TrainingDiverged) as error:
        train_tiny(tiny_cfg(**keys), tmp_path)
    message = str(error.value)
    value = re.search(r"this rank's loss: (\w+)", message).group(1)
    scenes = re.search(r"rank 0: (\[.*?\])", message).group(1)
    assert error.value.step == 1 and value in ("inf", "nan")

    argv = shlex.split(replay_command(tmp_path, error.value.step, overrides, world_size=1))
    assert argv[:3] == ["python", "-m", "fabric_mvsplat.train"] and argv[3:3 + len(overrides)] == overrides
    settings = dict(arg.split("=", 1) for arg in argv[3:])
    assert settings["checkpointing.load"] == str(tmp_path / "checkpoints" / "epoch_0-step_1.ckpt")
    capfd.readouterr()
    with pytest.raises(RuntimeError, match=r"Function '\w+Backward\d*' returned nan values") as anomaly:
        train_tiny(tiny_cfg(**settings), Path(settings["output_dir"]))
    assert not isinstance(anomaly.value, TrainingDiverged)  # anomaly detection stopped it, in backward
    printed = capfd.readouterr().err
    assert f"replay: step 1: scenes {scenes}: loss {value}" in printed, printed


# ---------------------------------------------------------------------------------------------- determinism
def test_two_deterministic_runs_give_identical_checkpoints(synthetic_root, tmp_path):
    checkpoints = []
    for name in ("a", "b"):
        run = tmp_path / name
        run_train(demo_overrides(synthetic_root, f"output_dir={run}", "trainer.deterministic=true",
                                 "trainer.max_steps=3", "trainer.val_check_interval=null",
                                 "checkpointing.every_n_train_steps=3"), cwd=tmp_path)
        checkpoints.append(torch.load(run / "checkpoints" / "epoch_0-step_3.ckpt", weights_only=True))
    a, b = checkpoints
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert a["state_dict"][key].numpy().tobytes() == b["state_dict"][key].numpy().tobytes(), key
    for (key, x), (_, y) in zip(sorted(a["optimizer_states"][0]["state"].items()),
                                sorted(b["optimizer_states"][0]["state"].items())):
        for name in x:
            assert torch.equal(x[name], y[name]), (key, name)


def test_deterministic_switches_on_torchs_deterministic_algorithms(monkeypatch):
    from fabric_mvsplat.debug.determinism import make_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        make_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        make_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


# -------------------------------------------------------------------------------------------------- inspect
SECTIONS = ["== config: differences from the defaults", "== parameters per model part ==",
            "== stored cameras of the first", "== training batch 0: scenes", "== training batch 1: scenes",
            "== one forward and backward at global step 0", "== gradient norms per model part",
            "== plane sweep: the depth candidates' probabilities", "== predicted Gaussians",
            "== ground-truth depth", "== how far the plane sweep can see", "== pictures ==", "== problems =="]


def test_inspect_mode_on_the_demo_data_prints_every_section_and_saves_the_pictures(synthetic_root, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    result = run_train(demo_overrides(synthetic_root, "mode=inspect", f"output_dir={run}"), cwd=tmp_path)
    for section in SECTIONS:
        assert section in result.stdout, section
    assert "dataset.image_shape: [180, 320] -> [32, 32]" in result.stdout  # the config's differences
    assert "  mode: 'train' -> 'inspect'" in result.stdout
    assert re.search(r"encoder\.depth_predictor\.refine_unet +[\d,]+\n", result.stdout)  # parameters per part
    assert re.search(r"encoder\.backbone\.transformer +[\d.]+ +[\d.]+ +[\d.]+\n", result.stdout)  # time, memory
    assert "context: image [1, 2, 3, 32, 32] float32 range [" in result.stdout
    assert "near 1, far 20" in result.stdout and "context gap" in result.stdout and "baseline" in result.stdout
    assert "at the near plane:" in result.stdout and "opacity: min" in result.stdout
    assert "a context pixel moves in the other view, between the near and far planes: min" in result.stdout
    assert re.search(r"between its true depth / 1.25 and x 1.25: .*; under one feature pixel at [\d.]+% of the "
                     r"pixels\n  a colour plane sweep .* AbsRel [\d.]+, delta<1.25 [\d.]+, where", result.stdout)
    assert result.stdout.rstrip().endswith("== problems ==\n  none found")
    assert not (run / "checkpoints").exists()  # nothing trained, nothing saved
    for name in ("cameras.png", "images_depth.png"):
        with Image.open(run / "inspect" / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert (run / "inspect" / "report.txt").read_text().splitlines()[-1] == "  none found"


def inspect_in_process(root: Path, output_dir: Path, *extra: str) -> dict:
    from fabric_mvsplat.train import run

    cfg = compose_cfg(demo_overrides(root, "mode=inspect", f"output_dir={output_dir}", "debug.inspect_batches=1",
                                     *extra))
    return run(cfg, output_dir)


def test_inspect_runs_the_forward_at_the_loaded_checkpoints_step(synthetic_root, demo_training, tmp_path, capsys):
    """The opacity schedule depends on the global step: a loaded checkpoint's forward runs at its step."""
    checkpoint = demo_training[1] / "checkpoints" / "epoch_0-step_2.ckpt"
    inspect_in_process(synthetic_root, tmp_path / "run", f"checkpointing.load={checkpoint}")
    printed = capsys.readouterr().out
    assert f"  weights from {checkpoint}" in printed
    assert "== one forward and backward at global step 2 (first batch) ==" in printed


def test_inspect_flags_a_plane_sweep_that_picks_one_candidate(synthetic_root, demo_training, tmp_path, capsys):
    """The demo's failure mode (docs/debugging.md): the depth head's softmax puts one candidate first at every
    pixel, so the cost volume no longer decides any depth. Forced here with one large logit bias."""
    checkpoint = torch.load(demo_training[1] / "checkpoints" / "epoch_0-step_2.ckpt", weights_only=True)
    checkpoint.pop("content_sha256")  # edited weights: the stored hashes no longer apply
    checkpoint["state_dict"]["encoder.depth_predictor.depth_head_lowres.2.bias"][7] += 1e4
    collapsed = tmp_path / "collapsed.ckpt"
    torch.save(checkpoint, collapsed)

    result = inspect_in_process(synthetic_root, tmp_path / "run", f"checkpointing.load={collapsed}")
    [problem] = [p for p in result["problems"] if p.startswith("the plane sweep has collapsed")]
    assert "depth candidate 7 of 8" in problem and "at 100.0% of the context pixels" in problem
    assert "1 of 8 candidates are the most probable somewhere" in capsys.readouterr().out
    healthy = inspect_in_process(synthetic_root, tmp_path / "healthy", f"checkpointing.load={demo_training[1]}"
                                 "/checkpoints/epoch_0-step_2.ckpt")
    assert not [p for p in healthy["problems"] if "plane sweep" in p]


def test_validation_logs_the_plane_sweep_and_the_run_summary_names_a_collapse(synthetic_root, capsys):
    """The same failure seen while training: each validation logs the commonest candidate's share, and a run that
    ends collapsed says so in its last lines."""
    from types import SimpleNamespace

    from fabric_mvsplat.build import make_model
    from fabric_mvsplat.data import StepTracker, TrainStream
    from fabric_mvsplat.loop import TrainingSummary
    from fabric_mvsplat.report import report_end

    cfg = compose_cfg(demo_overrides(synthetic_root))
    # Seeded as training seeds it: about 1 random initialisation in 40 already puts one of the tiny model's 8
    # candidates first at 90 % of the pixels, and this test made that a 1-in-40 failure.
    torch.manual_seed(cfg.seed)
    model = make_model(cfg).eval()
    batch = next(iter(TrainStream(cfg.dataset, cfg.data_loader.train, StepTracker(), 0, 1, cfg.seed)))
    fresh = model.validation_step(batch, global_step=0).scalars["val/plane_sweep_commonest_share"]
    with torch.no_grad():
        model.encoder.depth_predictor.depth_head_lowres[2].bias[7] += 1e4
    collapsed = model.validation_step(batch, global_step=0).scalars["val/plane_sweep_commonest_share"]
    assert fresh < 0.9 and collapsed == 1.0
    without_volume = make_model(compose_cfg(demo_overrides(synthetic_root, "model.encoder.wo_cost_volume=true")))
    assert "val/plane_sweep_commonest_share" not in without_volume.eval().validation_step(batch, 0).scalars

    fabric = SimpleNamespace(global_rank=0, world_size=1)
    for share, named in ((fresh, False), (collapsed, True)):
        summary = TrainingSummary(start_step=0, end_step=2, tensorboard=Path("tb"), best_val_psnr=20.0,
                                  val={"val/psnr": 20.0, "val/plane_sweep_commonest_share": share})
        report_end(fabric, cfg, summary, Path("run"))
        printed = capsys.readouterr().out
        assert ("validation plane sweep: one depth candidate is the most probable at 100% of the context pixels"
                in printed) is named


def test_inspect_flags_near_far_that_exclude_the_scene(synthetic_root, tmp_path):
    """The demo's scenes lie at depths 1-20; near/far ten times too large leave most ground-truth depths out, and
    the plane sweep's candidates all land within a feature pixel or two of each other."""
    result = inspect_in_process(synthetic_root, tmp_path / "run", "dataset.near=10", "dataset.far=200")
    [problem] = [p for p in result["problems"] if p.startswith("near/far exclude most ground-truth depths")]
    assert "[near, far] = [10, 200]" in problem
    [problem] = [p for p in result["problems"] if p.startswith("the context views barely move against each other")]
    assert "between the near (10) and far (200) planes a context pixel moves a median 0." in problem
    assert (tmp_path / "run" / "inspect" / "cameras.png").is_file()


def test_inspect_flags_a_mirrored_camera(synthetic_root, tmp_path):
    from fabric_mvsplat.data.chunk_io import read_chunk

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    chunk_path = sorted((root / "train").glob("*.torch"))[0]
    chunk = read_chunk(chunk_path)
    mirrored = chunk[0]["key"]
    chunk[0]["cameras"][3, 6:10] *= -1  # view 3's world-to-camera x row flipped: a reflection, det -1
    torch.save(chunk, chunk_path)

    result = inspect_in_process(root, tmp_path / "run")
    [problem] = [p for p in result["problems"] if "cameras that are not rotations" in p]
    assert f"{mirrored}: view 3's world-to-camera rotation is not a rotation (det -1" in problem
    clean = inspect_in_process(synthetic_root, tmp_path / "clean")
    assert clean["problems"] == []


# ---------------------------------------------------------------------------------------- health histograms
def test_health_histograms_appear_at_the_configured_interval_only(synthetic_root, demo_training, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_train(demo_overrides(synthetic_root, f"output_dir={run}", "debug.health_every_n_steps=2",
                             "trainer.max_steps=5", "trainer.val_check_interval=null"), cwd=tmp_path)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()["histograms"]
    for tag in ("health/gaussian_depth", "health/gaussian_opacity", "health/gaussian_scale",
                "health/grad_norm/encoder.depth_predictor.refine_unet", "health/grad_norm/encoder.backbone.backbone"):
        assert tag in tags, tags
        assert [event.step for event in events.Histograms(tag)] == [2, 4]
    opacity = events.Histograms("health/gaussian_opacity")[0].histogram_value
    assert 0 <= opacity.min <= opacity.max <= 1 and opacity.num == 2 * 32 * 32  # one Gaussian per context pixel
    assert [e.step for e in events.Scalars("health/gaussians_at_far")] == [2, 4]
    # The session's demo run (health histograms off) wrote none.
    assert read_events(demo_training[1] / "tensorboard").Tags()["histograms"] == []
