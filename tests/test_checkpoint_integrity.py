"""Checkpoints you can trust: changed bytes are refused, a full disk or a kill mid-write loses nothing, odd files
passed as checkpoints get an accurate message, and the next run removes a killed write's temporary file."""

import builtins
import errno
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from loop_fixtures import TinyModel, tiny_cfg, train_tiny

from fabric_mvsplat import checkpoint as ckpt
from fabric_mvsplat import train
from fabric_mvsplat.checkpoint import CheckpointError, load_file, save_atomically
from fabric_mvsplat.errors import DiskFullError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint written by the real loop (2 steps of the tiny model)."""
    output_dir = tmp_path_factory.mktemp("trained")
    train_tiny(tiny_cfg(**{"trainer.max_steps": 2, "checkpointing.every_n_train_steps": 2,
                           "trainer.val_check_interval": None}), output_dir)
    return output_dir / "checkpoints" / "epoch_0-step_2.ckpt"


def copy_of(source: Path, directory: Path) -> Path:
    target = directory / source.name
    target.write_bytes(source.read_bytes())
    return target


def test_flipped_tensor_bytes_are_refused_though_torch_loads_them(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    weight = torch.load(path, weights_only=True)["state_dict"]["encoder.0.weight"]
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(weight.numpy().tobytes())  # the tensor's storage record inside the zip
    assert offset > 0 and bytes(data).count(weight.numpy().tobytes()) == 1
    data[offset + 5] ^= 0x40
    path.write_bytes(bytes(data))
    # The edit is in a record's stored data (its zip CRC no longer matches), yet torch.load reads it silently.
    assert zipfile.ZipFile(path).testzip() is not None
    altered = torch.load(path, weights_only=True)["state_dict"]["encoder.0.weight"]
    assert not torch.equal(altered, weight)
    with pytest.raises(CheckpointError, match="checkpoint corrupted") as error:
        load_file(path)
    assert str(path) in str(error.value) and "state_dict" in str(error.value)


def test_changed_tensor_with_a_valid_zip_crc_is_refused(trained, tmp_path):
    """A re-written archive (CRCs recomputed, e.g. a faulty copy tool) is caught by the content hash alone."""
    path = tmp_path / "rezipped.ckpt"
    weight = torch.load(trained, weights_only=True)["state_dict"]["encoder.3.weight"]
    needle, changed = weight.numpy().tobytes(), 0
    with zipfile.ZipFile(trained) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info)
            if needle in content:
                content, changed = content.replace(needle, (weight + 1e-3).numpy().tobytes()), changed + 1
            target.writestr(info, content)
    assert changed == 1 and zipfile.ZipFile(path).testzip() is None  # one record changed, every CRC valid
    assert not torch.equal(torch.load(path, weights_only=True)["state_dict"]["encoder.3.weight"], weight)
    with pytest.raises(CheckpointError, match=f"checkpoint corrupted: {path}.*state_dict"):
        load_file(path)


def test_changed_pickle_bytes_are_refused(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    data = path.read_bytes()
    offset = data.find(b"global_step")  # the top-level key in data.pkl
    path.write_bytes(data[:offset] + b"global_stOp" + data[offset + len(b"global_step"):])
    # torch notices nothing; pickle stores the string once, so the hash entry's own key changed with it
    raw = torch.load(path, weights_only=True)
    assert "global_stOp" in raw and "global_stOp" in raw[ckpt.CONTENT_HASH_KEY]
    with pytest.raises(CheckpointError, match="checkpoint corrupted.*the content of global_stOp "):
        load_file(path)


def test_intact_and_hashless_checkpoints_load(trained, tmp_path):
    loaded = load_file(trained)
    assert loaded["global_step"] == 2 and ckpt.CONTENT_HASH_KEY not in loaded
    raw = torch.load(trained, weights_only=True)  # still a plain dict for torch and Lightning
    assert set(raw[ckpt.CONTENT_HASH_KEY]) == set(raw) - {ckpt.CONTENT_HASH_KEY}
    released = tmp_path / "released.ckpt"  # the original's layout, no hash
    torch.save({"state_dict": TinyModel().state_dict(), "global_step": 7, "epoch": 1}, released)
    assert load_file(released)["global_step"] == 7


def test_an_object_added_to_a_hashed_checkpoint_is_refused_even_with_unsafe_load(trained, tmp_path):
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"] = Path("added later")
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        with pytest.raises(CheckpointError, match="checkpoint corrupted.*hyper_parameters is a PosixPath"):
            load_file(path, allow_unsafe_load=True)


def test_resume_from_a_corrupted_checkpoint_stops_before_training(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    data = bytearray(path.read_bytes())
    weight = torch.load(path, weights_only=True)["state_dict"]["encoder.0.weight"]
    data[bytes(data).find(weight.numpy().tobytes()) + 1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint corrupted"):
        train_tiny(tiny_cfg(**{"checkpointing.load": path}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_directory_legacy_empty_and_foreign_files_get_accurate_messages(trained, tmp_path):
    with pytest.raises(CheckpointError, match=f"{trained.parent} is a directory.*epoch_0-step_2.ckpt"):
        load_file(trained.parent)
    legacy = tmp_path / "legacy.ckpt"
    state = {"state_dict": TinyModel().state_dict(), "global_step": 3}
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    assert load_file(legacy)["global_step"] == 3  # torch still reads the legacy format with weights_only=True
    truncated = tmp_path / "legacy_truncated.ckpt"
    truncated.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="legacy_truncated.ckpt is an old non-zip torch.save file.*truncated"):
        load_file(truncated)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.ckpt is empty"):
        load_file(empty)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.ckpt is not a torch.save file"):
        load_file(text)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full to produce a real ENOSPC")
def test_full_disk_gives_one_message_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    """The third checkpoint's temporary file is /dev/full: the kernel answers its writes with ENOSPC."""
    opened = []

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        if str(file).endswith(ckpt.TEMPORARY_SUFFIX):
            opened.append(file)
            if len(opened) == 3:
                return builtins.open("/dev/full", mode, *args, **kwargs)
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt, "open", open_on_full_disk, raising=False)
    cfg = tiny_cfg(**{"trainer.max_steps": 6, "checkpointing.every_n_train_steps": 2,
                      "trainer.val_check_interval": None})
    with pytest.raises(DiskFullError) as error:  # its own exit code (74) in main, not a user error's 2
        train_tiny(cfg, tmp_path)
    message = str(error.value)
    directory = tmp_path / "checkpoints"
    assert isinstance(error.value.__cause__, OSError) and error.value.__cause__.errno == errno.ENOSPC
    assert f"writing checkpoint {directory / 'epoch_0-step_6.ckpt'}" in message and "no space left" in message
    assert "earlier checkpoints are intact" in message
    assert f"checkpointing.load={directory / 'epoch_0-step_4.ckpt'}" in message
    assert sorted(p.name for p in directory.iterdir()) == ["epoch_0-step_2.ckpt", "epoch_0-step_4.ckpt"]
    assert [load_file(directory / f"epoch_0-step_{s}.ckpt")["global_step"] for s in (2, 4)] == [2, 4]


KILLED_WRITER = textwrap.dedent("""
    import io, sys, time
    from pathlib import Path
    import torch
    from fabric_mvsplat.checkpoint import save_atomically

    directory, target = Path(sys.argv[1]), Path(sys.argv[2])
    real_save = torch.save

    def slow_save(obj, file):  # half the bytes reach the disk, then the process is killed
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: buffer.tell() // 2])
        file.flush()
        print("writing", flush=True)
        time.sleep(120)
        file.write(buffer.getvalue()[buffer.tell() // 2:])

    torch.save = slow_save
    save_atomically({"state_dict": {"w": torch.full((100_000,), 9.0)}, "global_step": 9}, target)
""")


@pytest.mark.parametrize("overwrite", [False, True])
def test_sigkill_during_a_write_keeps_every_checkpoint_and_the_next_run_removes_its_temporary(
        tmp_path, monkeypatch, overwrite):
    directory = tmp_path / "out" / "checkpoints"
    for step in (2, 4):
        save_atomically({"state_dict": {"w": torch.full((10,), float(step))}, "global_step": step},
                        directory / f"epoch_0-step_{step}.ckpt")
    target = directory / ("epoch_0-step_4.ckpt" if overwrite else "epoch_0-step_6.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(directory), str(target)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    finally:
        writer.kill()
        writer.stdout.close()
    stray = directory / f".{target.name}{ckpt.TEMPORARY_SUFFIX}"
    assert stray.is_file() and stray.stat().st_size > 0
    for step in (2, 4):  # both earlier checkpoints load with their content hash verified
        loaded = load_file(directory / f"epoch_0-step_{step}.ckpt")
        assert loaded["global_step"] == step and torch.equal(loaded["state_dict"]["w"], torch.full((10,), step * 1.0))
    assert overwrite or not target.exists()

    # The next training run in that folder removes the temporary before any work; a test-mode run does not.
    ran = []
    monkeypatch.setattr(train, "prepare_data", lambda fabric, cfg: None)
    monkeypatch.setattr(train, "run_training", lambda *_: ran.append("train"))
    monkeypatch.setattr(train, "run_test_mode", lambda *_: ran.append("test"))
    monkeypatch.setattr(train, "report_end", lambda *_: None)
    test_cfg = tiny_cfg(**{"mode": "test", "checkpointing.load": directory / "epoch_0-step_4.ckpt"})
    train.run(test_cfg, tmp_path / "out")
    assert stray.is_file()
    resume_cfg = tiny_cfg(**{"checkpointing.load": directory / "epoch_0-step_4.ckpt"})
    train.run(resume_cfg, tmp_path / "out")
    assert ran == ["test", "train"] and not stray.exists()
    assert sorted(p.name for p in directory.iterdir()) == ["epoch_0-step_2.ckpt", "epoch_0-step_4.ckpt"]
