"""The folders a run writes: one live run per folder (the second is refused naming the first; a lock a kill -9
left behind blocks nobody), read-only folders refused before any work, a failed start leaves no log, a full disk
has its own exit code."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_preemption import ENV, finish, tiny_command, wait_for_line

from fabric_mvsplat.checkpoint import LATEST_RECORD, list_checkpoints, load_file
from fabric_mvsplat.errors import DiskFullError, OutputFolderError
from fabric_mvsplat.loop import EXIT_STOPPED_BY_SIGNAL
from fabric_mvsplat.output_folder import LOCK_NAME, FolderLock, check_writable
from fabric_mvsplat.train import EXIT_DISK_FULL, EXIT_USER_ERROR, error_ending

KEYS = {"trainer.max_steps": 8, "trainer.val_check_interval": 4, "checkpointing.every_n_train_steps": 4,
        "train.print_log_every_n_steps": 1}


def tiny_run(output_dir: Path, keys: dict, step_seconds: float, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *tiny_command(output_dir, keys, step_seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or ENV, start_new_session=True)


def test_a_second_run_on_a_busy_folder_is_refused_naming_the_first_which_ends_intact(tmp_path):
    """The second run starts while the first is writing a checkpoint (the moment a second run used to delete the
    writer's temporary file as a stray): it stops with exit 2 and one line naming the first run."""
    run = tmp_path / "run"
    keys = {**KEYS, "trainer.max_steps": 4}  # one checkpoint, written over 20 s: the second run starts meanwhile
    first = tiny_run(run, keys, 0.0, env={**ENV, "FABRIC_MVSPLAT_TEST_SLOW_SAVE": "20"})
    lines = wait_for_line(first, r"^writing checkpoint")
    second = subprocess.run([sys.executable, *tiny_command(run, keys, 0.0)], capture_output=True, text=True,
                            env=ENV, timeout=120)
    still_writing = first.poll() is None
    output = finish(first, lines)
    assert second.returncode == EXIT_USER_ERROR, second.stdout[-2000:] + second.stderr[-2000:]
    refusal = [line for line in second.stderr.splitlines() if line.startswith("fabric_mvsplat:")]
    assert refusal == [f"fabric_mvsplat: output_dir={run} is in use by another run (pid {first.pid} on host "
                       f"{os.uname().nodename}, started {refusal[0].split('started ')[1].split(')')[0]}): wait for "
                       "it to end, or give this run another output_dir"], second.stderr[-2000:]
    assert "step 1/" not in second.stdout  # it did no work
    assert still_writing, output[-3000:]
    assert first.returncode == 0, output[-3000:]
    [(step, path)] = list_checkpoints(run / "checkpoints")
    assert step == 4 and load_file(path)["global_step"] == 4  # the content hash verifies: nothing was cut short
    assert not (run / LOCK_NAME).exists()  # released at the end
    assert json.loads((run / LATEST_RECORD).read_text())["checkpoint"] == "epoch_0-step_4.ckpt"


def test_a_lock_left_by_kill_9_does_not_block_the_next_run(tmp_path):
    run = tmp_path / "run"
    killed = tiny_run(run, {**KEYS, "trainer.max_steps": 40}, 0.3)
    lines = wait_for_line(killed, r"^step 5/\d+: loss")
    os.killpg(killed.pid, signal.SIGKILL)
    finish(killed, lines)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == killed.pid  # left behind, still naming the dead run
    resumed = subprocess.run([sys.executable, *tiny_command(run, {**KEYS, "checkpointing.load": "latest"}, 0.0)],
                             capture_output=True, text=True, env=ENV, timeout=120)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / 'epoch_0-step_4.ckpt'} at global step 4" in resumed.stdout
    assert not (run / LOCK_NAME).exists()


def test_the_lock_is_exclusive_and_released(tmp_path):
    folder = tmp_path / "a" / "b"
    with FolderLock(folder, "output_dir"):
        assert (folder / LOCK_NAME).is_file()
        with pytest.raises(OutputFolderError, match=rf"output_dir={folder} is in use by another run \(pid {os.getpid()}"):
            FolderLock(folder, "output_dir").acquire()  # a second open file description: refused as another run
        (folder / "kept.txt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["kept.txt"]
    with FolderLock(tmp_path / "c" / "d", "output_dir"):  # a run that wrote nothing ...
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # ... leaves no folder behind


def read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` in a private mount namespace where `folder` is mounted read-only (skips without user namespaces)."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to make a read-only folder")
    quoted = " ".join(map(shlex_quote, [str(folder)] * 2))
    return ["unshare", "-rm", "sh", "-c", f"mount --bind {quoted} && mount -o remount,bind,ro {shlex_quote(str(folder))}"
            f" && exec {' '.join(map(shlex_quote, command))}"]


def shlex_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def test_read_only_training_folders_are_refused_before_any_work(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    result = subprocess.run(read_only(run, [sys.executable, *tiny_command(run, KEYS, 0.0)]), capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert result.returncode == EXIT_USER_ERROR, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (f"fabric_mvsplat: output_dir={run} is not writable "
                                                      "(Read-only file system)")
    assert "step 1" not in result.stdout

    (run / "checkpoints").chmod(0o755)
    result = subprocess.run(read_only(run / "checkpoints", [sys.executable, *tiny_command(run, KEYS, 0.0)]),
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == EXIT_USER_ERROR, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (f"fabric_mvsplat: output_dir={run} is not writable (its "
                                                      "sub-folder checkpoints): Read-only file system")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # no lock, no log, no events left behind


def test_read_only_test_output_is_refused_before_rendering(synthetic_root, trained_checkpoint, tmp_path):
    """Test mode found an unwritable test.output_path only after rendering every scene."""
    from conftest import demo_overrides

    out = tmp_path / "results"
    out.mkdir()
    command = [sys.executable, "-m", "fabric_mvsplat.train", *demo_overrides(
        synthetic_root, "mode=test", "dataset/view_sampler=evaluation", f"checkpointing.load={trained_checkpoint}",
        f"test.output_path={out}", f"output_dir={tmp_path / 'run'}")]
    result = subprocess.run(read_only(out, command), capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == EXIT_USER_ERROR, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (f"fabric_mvsplat: test.output_path={out / 'demo'} cannot be "
                                                      "created (Read-only file system)")
    assert "test scenes" not in result.stderr and not (tmp_path / "run").exists()  # nothing rendered or written


def test_a_failed_start_leaves_no_log_and_no_folder(synthetic_root, tmp_path):
    """A run that stops at start-up after it has taken its folder and logged its first lines (here: the checkpoint
    to resume is not a checkpoint): output_dir is not left behind, nor a train.log in it."""
    from conftest import demo_overrides, run_train

    run = tmp_path / "run"
    broken = tmp_path / "broken.ckpt"
    broken.write_text("not a checkpoint")
    result = run_train(demo_overrides(synthetic_root, f"output_dir={run}", "trainer.max_steps=1",
                                      f"checkpointing.load={broken}"), cwd=tmp_path, check=False)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "broken.ckpt is not a torch.save file" in result.stderr.strip().splitlines()[-1]
    assert "output directory:" in result.stdout + result.stderr  # it had started logging
    assert not run.exists()


def test_a_full_disk_exits_74_with_one_line_and_earlier_checkpoints_intact(tmp_path):
    """A real ENOSPC: output_dir on a tmpfs too small for the third checkpoint."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -rm to mount a small tmpfs")
    run = tmp_path / "run"
    run.mkdir()
    keys = {**KEYS, "trainer.max_steps": 40, "checkpointing.every_n_train_steps": 2, "trainer.val_check_interval": None}
    command = " ".join(map(shlex_quote, [sys.executable, *tiny_command(run, keys, 0.0)]))
    checkpoints = shlex_quote(str(run / "checkpoints"))
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=160k tmpfs {shlex_quote(str(run))}"
                             f" && {{ {command}; code=$?; ls {checkpoints} >&2; exit $code; }}"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == EXIT_DISK_FULL, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    [message] = [line for line in lines if line.startswith("fabric_mvsplat:")]
    assert message.startswith("fabric_mvsplat: no space left on the device"), result.stderr[-3000:]
    assert "intact" in message and ("output_dir" in message or "checkpointing.load=" in message)
    listing = lines[lines.index(message) + 1:]
    assert listing and all(name.startswith("epoch_0-step_") and name.endswith(".ckpt") for name in listing)


def test_disk_full_anywhere_maps_to_its_own_exit_code_and_user_errors_to_2():
    import errno

    assert error_ending(DiskFullError("no space left on the device while writing checkpoint x"))[0] == EXIT_DISK_FULL
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "scene/color/000003.png")
        except OSError as cause:
            raise RuntimeError("ffmpeg could not write video") from cause
    except RuntimeError as error:
        assert error_ending(error)[0] == EXIT_DISK_FULL
    assert error_ending(OutputFolderError("output_dir", "/x", "is not writable"))[0] == EXIT_USER_ERROR
    assert error_ending(KeyboardInterrupt())[0] == 130
    assert error_ending(ValueError("a bug")) is None  # keeps its traceback
    assert EXIT_DISK_FULL not in (0, 1, 2, 3, EXIT_STOPPED_BY_SIGNAL)


def test_check_writable_creates_nothing(tmp_path):
    check_writable(tmp_path / "not" / "yet", "output_dir")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is not a folder"):
        check_writable(tmp_path / "file" / "run", "output_dir")


def test_under_torchrun_rank_0_holds_the_folder_and_every_rank_is_refused_alike(tmp_path):
    """A 2-rank run on a folder another run holds: rank 0 finds the lock, every rank stops with exit code 2."""
    from test_preemption import torchrun

    run, record = tmp_path / "run", tmp_path / "exit_codes"
    record.mkdir()
    with FolderLock(run, "output_dir"):  # the other run (this process)
        result = subprocess.run(torchrun(run, {**KEYS, "trainer.devices": "auto"}, 0.0), capture_output=True,
                                text=True, timeout=300, env={**ENV, "FABRIC_MVSPLAT_TEST_EXIT_RECORD": str(record)})
    codes = {path.name: int(path.read_text()) for path in sorted(record.iterdir())}
    assert codes == {"rank0.exit": EXIT_USER_ERROR, "rank1.exit": EXIT_USER_ERROR}, result.stderr[-3000:]
    assert result.stderr.count(f"output_dir={run} is in use by another run (pid {os.getpid()}") == 2
    assert "step 1/" not in result.stdout and not run.exists()  # nothing written; the holder removed its lock
