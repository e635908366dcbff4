"""The demo page's commands work as printed, in an empty folder: train (shortened), then the next two commands
verbatim, then the test command the training run itself printed. README.md shows the same next commands."""

import shlex
import subprocess
import sys
from pathlib import Path

from conftest import REPO, subprocess_env

DEMO_PAGE = REPO / "docs" / "demo.md"
SHORT_RUN = ["trainer.max_steps=2", "trainer.val_check_interval=null", "checkpointing.every_n_train_steps=2",
             "train.print_log_every_n_steps=1", "train.video_frames=3"]


def demo_commands(path: Path) -> list[str]:
    """The first bash block's commands, continuation lines joined."""
    text = path.read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert command[:2] == ["python", "-m"], command
    result = subprocess.run([sys.executable, *command[1:]], cwd=cwd, env=subprocess_env(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_demo_pages_next_commands_work_as_printed(tmp_path):
    from fabric_mvsplat.data.synthetic import SyntheticSpec, generate_synthetic_dataset

    train, test, figures = demo_commands(DEMO_PAGE)
    readme = REPO / "README.md"
    assert [test, figures] == [c for c in demo_commands_anywhere(readme) if c in (test, figures)]

    # The demo's own dataset folder, smaller (the first command would generate 64 + 8 scenes).
    generate_synthetic_dataset(tmp_path / "datasets" / "synthetic",
                               SyntheticSpec(train_scenes=2, test_scenes=2, frames=24, seed=0), progress=False)
    trained = run([*shlex.split(train), *SHORT_RUN], tmp_path)
    assert (tmp_path / "outputs" / "demo" / "checkpoints" / "epoch_0-step_2.ckpt").is_file()

    tested = run(shlex.split(test), tmp_path)
    assert "checkpointing.load=latest -> outputs/demo/checkpoints/epoch_0-step_2.ckpt" in tested.stderr
    assert (tmp_path / "outputs" / "test" / "demo" / "scores_all_avg.json").is_file()

    run(shlex.split(figures), tmp_path)
    assert sorted(p.name for p in (tmp_path / "outputs" / "demo" / "figures").iterdir()) == [
        "demo_comparison.png", "demo_depth_by_true_depth.png", "demo_training_curve.png"]
    assert not (tmp_path / "docs").exists()

    # The command the training run printed for test mode works as printed too.
    [printed] = [line.split("test it with: ", 1)[1] for line in trained.stdout.splitlines() if "test it with: " in line]
    run(shlex.split(printed), tmp_path)


def demo_commands_anywhere(path: Path) -> list[str]:
    """Every command of every bash block in `path`, continuation lines joined."""
    text = path.read_text()
    commands = []
    for block in text.split("```bash\n")[1:]:
        body = block.split("```", 1)[0]
        commands += [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return commands
