"""Pre-emption with real OS signals: SIGTERM to a training process (alone, or torchrun with 2 ranks) mid-run
finishes the step, saves a checkpoint at that step, exits 75 and prints how to resume; the resumed run ends
bit-identical to an uninterrupted one. A second Ctrl-C exits at once."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from loop_fixtures import flat_parameters, tiny_cfg, train_tiny

from fabric_mvsplat.checkpoint import list_checkpoints
from fabric_mvsplat.loop import EXIT_STOPPED_BY_SIGNAL
from fabric_mvsplat.train import EXIT_INTERRUPTED

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])}
KEYS = {"trainer.max_steps": 12, "trainer.val_check_interval": 5, "checkpointing.every_n_train_steps": 100,
        "train.print_log_every_n_steps": 1}


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)  # our signal reaches only what we send it to


def wait_for_line(process: subprocess.Popen, pattern: str, timeout: float = 120) -> list[str]:
    """Read the console until a line matches: then the run is mid-training."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    process.kill()
    raise AssertionError(f"never printed {pattern!r}:\n" + "".join(lines[-40:]))


def finish(process: subprocess.Popen, lines: list[str], timeout: float = 120) -> str:
    rest, _ = process.communicate(timeout=timeout)
    return "".join(lines) + rest


def tiny_command(output_dir: Path, keys: dict, step_seconds: float) -> list[str]:
    return [str(TESTS / "loop_fixtures.py"), "tiny", str(output_dir), json.dumps(keys), str(step_seconds)]


def test_sigterm_saves_the_stopped_step_and_resume_is_bit_identical(tmp_path):
    _, uninterrupted, *_ = train_tiny(tiny_cfg(**KEYS), tmp_path / "reference")

    run = tmp_path / "run"
    process = start([sys.executable, *tiny_command(run, KEYS, 0.3)])
    lines = wait_for_line(process, r"^step 3/12: loss")
    os.kill(process.pid, signal.SIGTERM)
    output = finish(process, lines)
    assert process.returncode == EXIT_STOPPED_BY_SIGNAL, output[-3000:]
    [(stopped_at, path)] = list_checkpoints(run / "checkpoints")  # the interval (100) never came
    assert 3 <= stopped_at < 12
    assert f"stopped by SIGTERM after step {stopped_at}: checkpoint {path}" in output
    assert f"resume with: python -m fabric_mvsplat.train output_dir={run} checkpointing.load=latest" in output
    assert torch.load(path, weights_only=True)["global_step"] == stopped_at
    assert f"step {stopped_at + 1}/12: loss" not in output  # nothing ran after the saved step

    _, resumed, state, *_ = train_tiny(tiny_cfg(**KEYS, **{"checkpointing.load": "latest"}), run)
    assert resumed.seen_steps == list(range(stopped_at, 12)) and state["step"] == 12
    assert torch.equal(flat_parameters(resumed), flat_parameters(uninterrupted))


def test_second_ctrl_c_exits_at_once_without_saving(tmp_path):
    process = start([sys.executable, *tiny_command(tmp_path, KEYS, 1.0)])
    lines = wait_for_line(process, r"^step 1/12: loss")
    os.kill(process.pid, signal.SIGINT)
    lines += wait_for_line(process, r"SIGINT received")
    os.kill(process.pid, signal.SIGINT)
    output = finish(process, lines, timeout=30)
    assert process.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert output.strip().splitlines()[-1] == ("fabric_mvsplat: interrupted by a second Ctrl-C; every checkpoint on "
                                               "disk is complete (a write in progress was finished first)")
    assert "Traceback" not in output
    assert list_checkpoints(tmp_path / "checkpoints") == []


def test_second_ctrl_c_during_a_checkpoint_write_lets_the_write_finish(tmp_path):
    """The first Ctrl-C asks for a checkpoint; the second lands while it is being written (torch.save stalls mid-
    file): the write completes, the process exits 130 with one line, and no temporary file is left."""
    process = subprocess.Popen([sys.executable, *tiny_command(tmp_path, KEYS, 0.2)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**ENV, "FABRIC_MVSPLAT_TEST_SLOW_SAVE": "3"})
    lines = wait_for_line(process, r"^step 1/\d+: loss")
    os.kill(process.pid, signal.SIGINT)
    lines += wait_for_line(process, r"^writing checkpoint")
    os.kill(process.pid, signal.SIGINT)
    output = finish(process, lines, timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert "second Ctrl-C: exiting as soon as the checkpoint being written is complete" in output
    assert "Traceback" not in output and "enforce fail" not in output
    [(step, path)] = list_checkpoints(tmp_path / "checkpoints")
    assert torch.load(path, weights_only=True)["global_step"] == step
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [path.name]  # no temporary file left


def test_sigterm_to_the_process_group_spares_the_dataloader_workers(tmp_path):
    """SLURM and Ctrl-C signal every process of the job: torch's DataLoader workers would die of SIGTERM and
    take the step with them. They ignore it; the main process finishes the step and saves."""
    from data_fixtures import make_split

    make_split(tmp_path / "data" / "train", num_scenes=12)
    process = start([sys.executable, str(TESTS / "loop_fixtures.py"), "workers", str(tmp_path / "data"),
                     str(tmp_path / "run")])
    lines = wait_for_line(process, r"^step 2/\d+: loss")
    os.killpg(process.pid, signal.SIGTERM)  # the process group: the main process and its 2 workers
    output = finish(process, lines)
    assert process.returncode == EXIT_STOPPED_BY_SIGNAL, output[-3000:]
    [(stopped_at, path)] = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert f"stopped by SIGTERM after step {stopped_at}: checkpoint {path}" in output
    assert torch.load(path, weights_only=True)["train_stream"][0]["batches"] == stopped_at


def torchrun(output_dir: Path, keys: dict, step_seconds: float) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *tiny_command(output_dir, keys, step_seconds)]


def test_sigterm_to_torchrun_with_two_ranks_and_accumulation(tmp_path):
    keys = {**KEYS, "trainer.devices": "auto", "trainer.max_steps": 8, "trainer.accumulate_grad_batches": 2}
    # The uninterrupted reference runs beside the interrupted run (its own rendezvous port): same wall time saved.
    reference = subprocess.Popen(torchrun(tmp_path / "reference", keys, 0.0), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=ENV)
    run = tmp_path / "run"
    process = start(torchrun(run, keys, 0.4))
    lines = wait_for_line(process, r"^step 2/\d+: loss")
    os.kill(process.pid, signal.SIGTERM)  # torchrun passes it on to both ranks
    output = finish(process, lines)
    reference_output, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_output[-3000:]
    [(stopped_at, path)] = list_checkpoints(run / "checkpoints")
    assert 2 <= stopped_at < 8, output[-3000:]
    assert f"stopped by SIGTERM after step {stopped_at}" in output
    saved = torch.load(path, weights_only=True)
    assert [entry["position"] for entry in saved["train_stream"]] == [2 * stopped_at] * 2  # micro-batches

    resumed = subprocess.run(torchrun(run, {**keys, "checkpointing.load": "latest"}, 0.0), capture_output=True,
                             text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {path} at global step {stopped_at}" in resumed.stdout
    final = torch.load(run / "checkpoints" / "epoch_0-step_8.ckpt", weights_only=True)
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "epoch_0-step_8.ckpt", weights_only=True)
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    assert final["train_stream"] == expected["train_stream"]


def rank_pids(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (their RANK environment variable)."""
    children = set()
    for task in Path(f"/proc/{torchrun_pid}/task").iterdir():
        children.update(int(pid) for pid in (task / "children").read_text().split())
    ranks = {}
    for pid in children:
        environ = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry)
        if "RANK" in environ:
            ranks[int(environ["RANK"])] = pid
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' pids through /proc (Linux)")
def test_sigterm_to_one_rank_stops_every_rank_with_the_same_exit_code(tmp_path):
    """SIGTERM to rank 1 only (a node's OOM killer or a scheduler may signal one process): every rank saves its
    part of the same step and exits 75; rank 0 reports which rank got the signal."""
    keys = {**KEYS, "trainer.devices": "auto", "trainer.max_steps": 40, "trainer.val_check_interval": None}
    run, record = tmp_path / "run", tmp_path / "exit_codes"
    record.mkdir()
    process = subprocess.Popen(torchrun(run, keys, 0.4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env={**ENV, "FABRIC_MVSPLAT_TEST_EXIT_RECORD": str(record)})
    lines = wait_for_line(process, r"^step 2/\d+: loss")
    ranks = rank_pids(process.pid)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGTERM)
    output = finish(process, lines)
    codes = {path.name: int(path.read_text()) for path in sorted(record.iterdir())}
    assert codes == {"rank0.exit": EXIT_STOPPED_BY_SIGNAL, "rank1.exit": EXIT_STOPPED_BY_SIGNAL}, output[-3000:]
    [(stopped_at, path)] = list_checkpoints(run / "checkpoints")
    assert f"stopped by SIGTERM on rank 1 after step {stopped_at}: checkpoint {path}" in output
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == stopped_at and len(saved["train_stream"]) == 2
    assert f"resume with: torchrun --standalone --nproc_per_node=2 -m fabric_mvsplat.train output_dir={run} " \
           "checkpointing.load=latest" in output
