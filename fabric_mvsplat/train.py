"""Entry point and command line: `python -m fabric_mvsplat.train +experiment=re10k [key=value ...]`.

Hydra composes `fabric_mvsplat/configs/main.yaml`; `load_config` checks every key before any work; `run` then
builds Fabric, data, model, optimizer and scheduler (`build`) and hands them to `loop.fit` (mode=train) or to
`evaluation.test_mode.run_test` (mode=test). `main` is the one place errors become exit codes. Under `torchrun`,
Fabric reads the rank layout from torchrun's environment and every rank runs this same file.
"""

import os
import sys
import time
from pathlib import Path

import hydra
import torch
from lightning_fabric import Fabric
from omegaconf import DictConfig, OmegaConf

from .build import make_fabric, make_model, prepare_data, prepare_training
from .checkpoint import load_weights
from .config import CONFIG_DIR, RootCfg, check_before_work, load_config
from .data import StepTracker, TestLoader, TrainStream, ValidationSource
from .debug.determinism import make_deterministic
from .debug.inspect import run_inspect
from .debug.replay import hydra_overrides, replay_command
from .errors import EmptyEvaluationError, UserError
from .evaluation.test_mode import run_test
from .loop import EXIT_STOPPED_BY_SIGNAL, TrainingDiverged, TrainingSummary, fit
from .model.decoder.gsplat_build import prepare_gsplat
from .output_folder import open_output_folder, refuse_to_mix_runs, resolve_latest, write_config
from .progress import advise_if_busy
from .report import report_end

EXIT_USER_ERROR = 2  # a key, value or file the user fixes: one line names it
EXIT_EMPTY_EVALUATION = 3  # test mode rendered or scored no scene (the counts are written first)


def main() -> None:
    """The command line: our check of its Hydra overrides (a mistyped group option, key or syntax ends here in one
    line, exit code 2, before any folder exists), then Hydra's composition and the run. Hydra's own flags
    (--help, --cfg, -m, --config-dir ...) go to Hydra unchecked."""
    from .config.command_line import check_overrides

    overrides = sys.argv[1:]
    if not any(arg.startswith("-") for arg in overrides):
        try:
            check_overrides(CONFIG_DIR, overrides)
        except UserError as error:
            print(f"fabric_mvsplat: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
    run_from_hydra()


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="main")
def run_from_hydra(dict_config: DictConfig) -> None:
    """The one place errors end: one line naming the key or file, the value and the fix, and the exit code."""
    try:
        cfg = load_config(dict_config)
        check_before_work(cfg)
        result = run(cfg, Path(cfg.output_dir), config_yaml=OmegaConf.to_yaml(dict_config, resolve=True))
    except UserError as error:
        print(f"fabric_mvsplat: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except EmptyEvaluationError as error:  # every rank raises it together, after the results are written
        print(f"fabric_mvsplat: {error}", file=sys.stderr)
        sys.exit(EXIT_EMPTY_EVALUATION)
    if isinstance(result, TrainingSummary) and result.stopped_by is not None:
        sys.exit(EXIT_STOPPED_BY_SIGNAL)


def run(cfg: RootCfg, output_dir: Path, config_yaml: str | None = None) -> TrainingSummary | dict | None:
    """Everything after the config: the same code for one process and for every torchrun rank. Returns the
    training summary (mode=train) or test mode's averaged scores (rank 0; None elsewhere)."""
    advice = advise_if_busy()
    if advice is not None and os.environ.get("LOCAL_RANK", "0") == "0":  # once per machine under torchrun
        print(f"fabric_mvsplat: {advice}", file=sys.stderr, flush=True)
    resolve_latest(cfg, output_dir)
    refuse_to_mix_runs(cfg, output_dir)
    make_deterministic(cfg.trainer.deterministic)  # before anything creates the CUDA context
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as the original
    fabric = make_fabric(cfg.trainer)
    fabric.launch()
    prepare_gsplat(fabric, cfg.model.decoder.backend)  # local rank 0 builds gsplat's kernels first, if used
    prepare_data(fabric, cfg)
    # Each rank may have composed its own time-stamped Hydra directory; rank 0's wins.
    output_dir = Path(fabric.broadcast(str(output_dir), src=0))
    fabric.seed_everything(cfg.seed + fabric.global_rank)  # per-rank seeds, as the original
    open_output_folder(fabric, cfg, output_dir)
    if cfg.mode == "test":
        result = run_test_mode(fabric, cfg, output_dir, config_yaml)
    elif cfg.mode == "inspect":
        result = run_inspect(fabric, cfg, make_model(cfg), output_dir, config_yaml)
    else:
        result = run_training(fabric, cfg, output_dir, config_yaml)
        report_end(fabric, cfg, result, output_dir)
    shut_down(fabric)
    return result


def run_training(fabric: Fabric, cfg: RootCfg, output_dir: Path, config_yaml: str | None = None) -> TrainingSummary:
    model = make_model(cfg)
    step_tracker = StepTracker()
    train_stream = TrainStream(cfg.dataset, cfg.data_loader.train, step_tracker, fabric.global_rank,
                                     fabric.world_size, cfg.seed, cfg.trainer.accumulate_grad_batches)
    validating = cfg.trainer.val_check_interval is not None and fabric.global_rank == 0
    val_source = ValidationSource(cfg.dataset, cfg.data_loader.val, step_tracker, cfg.seed) if validating else None
    state = prepare_training(fabric, cfg, model, train_stream, val_source, step_tracker)
    write_config(fabric, cfg, output_dir, config_yaml, state["step"])
    try:
        return fit(fabric, cfg, state, output_dir)
    except TrainingDiverged as error:
        add_replay_note(fabric, cfg, error, output_dir)
        raise


def add_replay_note(fabric: Fabric, cfg: RootCfg, error: TrainingDiverged, output_dir: Path) -> None:
    """The command that reruns the diverged step under anomaly detection (printed under the error's message)."""
    replayed = cfg.debug.replay_step
    if replayed is not None:
        error.add_note(f"fabric_mvsplat: replay: step {error.step} diverged again: reproduced" if error.step == replayed
                       else f"fabric_mvsplat: replay: step {error.step} diverged, not the replayed step {replayed}")
        return
    command = replay_command(output_dir, error.step, hydra_overrides(), fabric.world_size, cfg.trainer.num_nodes)
    error.add_note(f"replay step {error.step} under anomaly detection (from the newest checkpoint before it, "
                   f"into its own folder):\n    {command}")


def run_test_mode(fabric: Fabric, cfg: RootCfg, output_dir: Path, config_yaml: str | None = None) -> dict | None:
    model = make_model(cfg)
    load_weights(model, cfg.checkpointing.load, cfg.checkpointing.allow_unsafe_load)
    write_config(fabric, cfg, output_dir, config_yaml, 0)
    model = fabric.to_device(model).eval()
    test_loader = TestLoader(cfg.dataset, cfg.data_loader.test, fabric.global_rank, fabric.world_size)
    return run_test(fabric, cfg, model, test_loader)


def shut_down(fabric: Fabric) -> None:
    """Leave the process group together: exiting with it alive can abort a rank during teardown."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        fabric.barrier()
        # gloo's worker thread drops the last collectives' tensors after they complete, and that needs the GIL.
        # If the process group's destructor runs first (when the DDP module is freed, in the main thread holding
        # the GIL), it joins that thread and both wait forever (seen under load in torch 2.13: a rank that never
        # exits). Sleeping releases the GIL so the worker finishes first.
        time.sleep(0.2)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
