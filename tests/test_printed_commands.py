"""Every command the project prints is safe to paste: a folder named with `$(...)`, quotes and spaces reaches the
program as printed (checked through a real bash and Hydra's own override parser), and nothing else runs."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fabric_mvsplat.debug.replay import replay_command
from fabric_mvsplat.loop import TrainingSummary
from fabric_mvsplat.report import report_end
from fabric_mvsplat.shell_command import hydra_quote
from loop_fixtures import tiny_cfg

HOSTILE_VALUES = ["/tmp/a b", "/tmp/$(touch x) 'q' \"d\"", "a\\", "a\\'b", "x${y}z", "a,b", "[1,2]", "a=b",
                  "it's \\\\ ok\\", "/plain/path-1.2", "tab\there", "new\nline", "ünï", "{a:b}", "${oc.env:HOME}",
                  "`id`;rm -rf ~", "*?"]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hydra_reads_a_quoted_value_back_exactly(value):
    override = OverridesParser.create().parse_overrides([f"output_dir={hydra_quote(value)}"])[0]
    resolved = OmegaConf.to_container(OmegaConf.create({"output_dir": override.value()}), resolve=True)
    assert resolved["output_dir"] == value


def run_as_pasted(command: str, tmp_path: Path) -> list[str]:
    """`command` through bash -c, with `python` and `tensorboard` stubs first on PATH that record their arguments;
    -> the arguments the program received."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    record = tmp_path / "argv.json"
    for name in ("python", "tensorboard", "torchrun"):
        stub = stubs / name
        stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    return json.loads(record.read_text())


def printed_lines(capsys, fabric, cfg, summary, output_dir) -> dict[str, str]:
    report_end(fabric, cfg, summary, output_dir)
    lines = [line.removeprefix("fabric_mvsplat: ") for line in capsys.readouterr().out.splitlines()]
    return {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines if ": " in line}


def hydra_values(arguments: list[str]) -> dict[str, object]:
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(arguments)}


def test_resume_and_test_commands_run_as_printed_and_nothing_else(tmp_path, capsys):
    marker = tmp_path / "marker"
    output_dir = tmp_path / f"run $(touch {marker}) it's \"quoted\" `touch {marker}`"
    fabric = SimpleNamespace(global_rank=0, world_size=1)
    cfg = tiny_cfg()
    stopped = TrainingSummary(start_step=0, tensorboard=output_dir / "tensorboard", end_step=3,
                              last_checkpoint=output_dir / "checkpoints" / "epoch_0-step_3.ckpt", stopped_by="SIGTERM")
    lines = printed_lines(capsys, fabric, cfg, stopped, output_dir)

    arguments = run_as_pasted(lines["resume with"], tmp_path)
    assert arguments[:2] == ["-m", "fabric_mvsplat.train"]
    assert hydra_values(arguments[2:]) == {"output_dir": str(output_dir), "checkpointing.load": "latest"}
    assert run_as_pasted(lines["TensorBoard"], tmp_path) == ["--logdir", str(output_dir / "tensorboard")]

    finished = TrainingSummary(start_step=0, tensorboard=output_dir / "tensorboard", end_step=3,
                               last_checkpoint=stopped.last_checkpoint)
    lines = printed_lines(capsys, fabric, cfg, finished, output_dir)
    arguments = run_as_pasted(lines["test it with"], tmp_path)
    assert hydra_values(arguments[2:]) == {"mode": "test", "checkpointing.load": str(stopped.last_checkpoint),
                                           "dataset/view_sampler": "evaluation", "test.compute_scores": True}
    assert not marker.exists()  # the `$(...)` and backticks in the folder name ran nothing


def test_the_replay_command_runs_as_printed(tmp_path):
    marker = tmp_path / "marker"
    output_dir = tmp_path / f"run $(touch {marker}), 'b'"
    (output_dir / "checkpoints").mkdir(parents=True)
    (output_dir / "checkpoints" / "epoch_0-step_4.ckpt").write_bytes(b"x")
    command = replay_command(output_dir, 6, ["+experiment=re10k", "data_loader.train.batch_size=7"], world_size=2)
    arguments = run_as_pasted(command, tmp_path)
    assert arguments[:3] == ["--standalone", "--nproc_per_node=2", "-m"]
    assert hydra_values(arguments[4:]) == {
        "experiment": "re10k", "data_loader.train.batch_size": 7, "output_dir": str(output_dir / "replay_step_6"),
        "debug.replay_step": 6, "checkpointing.load": str(output_dir / "checkpoints" / "epoch_0-step_4.ckpt"),
        "checkpointing.resume": True}
    assert not marker.exists()


def test_the_render_command_names_a_folder_inside_output_dir(tmp_path, capsys):
    """The suggested render command's output folder comes from a scene key: a hostile key stays inside."""
    from fabric_mvsplat.report import render_command

    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    (root / "test" / "index.json").write_text(json.dumps({"../../../outside": "000000.torch"}))
    cfg = tiny_cfg(**{"dataset.roots": f"[{root}]"})
    command = render_command(cfg, tmp_path / "model.ckpt", tmp_path / "run")
    arguments = run_as_pasted(command, tmp_path)
    output = Path(arguments[arguments.index("--output") + 1])
    assert output.parent == tmp_path / "run" / "render" and ".." not in output.parts
    assert arguments[arguments.index("--scene") + 1] == "../../../outside"  # the key itself, as data
