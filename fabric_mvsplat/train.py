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
from .debug.replay import replay_command
from .errors import DiskFullError, EmptyEvaluationError, UserError, is_disk_full
from .evaluation.test_mode import run_test
from .loop import EXIT_STOPPED_BY_SIGNAL, STOP_SIGNALS, TrainingDiverged, TrainingSummary, fit, ignore_signals
from .model.decoder.gsplat_build import prepare_gsplat
from .output_folder import RunLog, RunStart, claim_output_folders, record_start, refuse_to_mix_runs, resolve_latest
from .progress import advise_if_busy
from .report import report_end
from .shell_command import hydra_overrides

EXIT_USER_ERROR = 2  # a key, value or file the user fixes: one line names it
EXIT_EMPTY_EVALUATION = 3  # test mode rendered or scored no scene (the counts are written first)
EXIT_DISK_FULL = 74  # sysexits' EX_IOERR: no space left while writing; what was written before is intact
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C


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
    """The one place errors become exit codes (docs/errors.md): one line each, no traceback for what the user
    fixes; a bug keeps its traceback."""
    run_log = RunLog().install()  # log records wait in memory until the run has started
    try:
        cfg = load_config(dict_config)
        check_before_work(cfg)
        result = run(cfg, Path(cfg.output_dir), config_yaml=OmegaConf.to_yaml(dict_config, resolve=True),
                     run_log=run_log)
    except (Exception, KeyboardInterrupt) as error:
        ending = error_ending(error)
        if ending is None:
            raise
        code, message = ending
        print(f"fabric_mvsplat: {message}", file=sys.stderr)
        sys.exit(code)
    finally:
        run_log.close()
    code = result_exit_code(result)
    if code:
        sys.exit(code)


def error_ending(error: BaseException) -> tuple[int, str] | None:
    """(exit code, the line to print) for an error that ends a run the user can act on; None for a bug."""
    if isinstance(error, UserError):
        return EXIT_USER_ERROR, str(error)
    if isinstance(error, EmptyEvaluationError):  # every rank raises it together, after the results are written
        return EXIT_EMPTY_EVALUATION, str(error)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, ("interrupted by a second Ctrl-C; every checkpoint on disk is complete (a write "
                                  "in progress was finished first)")
    if isinstance(error, DiskFullError):
        return EXIT_DISK_FULL, str(error)
    if is_disk_full(error):
        return EXIT_DISK_FULL, (f"no space left on the device ({error}); the files written before are intact. "
                                "Free space, or set output_dir (test mode: test.output_path) on a larger disk")
    return None


def result_exit_code(result) -> int:
    """0, or 75 after a stop signal (the checkpoint is saved: run the same command to resume)."""
    stopped = isinstance(result, TrainingSummary) and result.stopped_by is not None
    return EXIT_STOPPED_BY_SIGNAL if stopped else 0


def run(cfg: RootCfg, output_dir: Path, config_yaml: str | None = None,
        run_log: RunLog | None = None) -> TrainingSummary | dict | None:
    """Everything after the config: the same code for one process and for every torchrun rank. Returns the
    training summary (mode=train) or test mode's averaged scores (rank 0; None elsewhere)."""
    advice = advise_if_busy()
    if advice is not None and os.environ.get("LOCAL_RANK", "0") == "0":  # once per machine under torchrun
        print(f"fabric_mvsplat: {advice}", file=sys.stderr, flush=True)
    make_deterministic(cfg.trainer.deterministic)  # before anything creates the CUDA context
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as the original
    fabric = make_fabric(cfg.trainer)
    fabric.launch()
    # Each rank may have composed its own time-stamped Hydra directory; rank 0's wins.
    output_dir = Path(fabric.broadcast(str(output_dir), src=0))
    with claim_output_folders(fabric, cfg, output_dir):  # before any work: one run per folder, writable
        resolve_latest(cfg, output_dir)
        refuse_to_mix_runs(cfg, output_dir)
        prepare_gsplat(fabric, cfg.model.decoder.backend)  # local rank 0 builds gsplat's kernels first, if used
        prepare_data(fabric, cfg)
        fabric.seed_everything(cfg.seed + fabric.global_rank)  # per-rank seeds, as the original
        started = RunStart(config_yaml, run_log)
        if cfg.mode == "test":
            result = run_test_mode(fabric, cfg, output_dir, started)
        elif cfg.mode == "inspect":
            record_start(fabric, cfg, output_dir, RunStart(None, run_log), 0)  # the log; inspect writes its report
            result = run_inspect(fabric, cfg, make_model(cfg), output_dir, config_yaml)
        else:
            result = run_training(fabric, cfg, output_dir, started)
            report_end(fabric, cfg, result, output_dir)
        shut_down(fabric, stopped_by_signal=result_exit_code(result) == EXIT_STOPPED_BY_SIGNAL)
    return result


def run_training(fabric: Fabric, cfg: RootCfg, output_dir: Path, started: RunStart | None = None) -> TrainingSummary:
    model = make_model(cfg)
    step_tracker = StepTracker()
    train_stream = TrainStream(cfg.dataset, cfg.data_loader.train, step_tracker, fabric.global_rank,
                                     fabric.world_size, cfg.seed, cfg.trainer.accumulate_grad_batches)
    validating = cfg.trainer.val_check_interval is not None and fabric.global_rank == 0
    val_source = ValidationSource(cfg.dataset, cfg.data_loader.val, step_tracker, cfg.seed) if validating else None
    state = prepare_training(fabric, cfg, model, train_stream, val_source, step_tracker)
    record_start(fabric, cfg, output_dir, started or RunStart(None, None), state["step"])
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


def run_test_mode(fabric: Fabric, cfg: RootCfg, output_dir: Path, started: RunStart | None = None) -> dict | None:
    model = make_model(cfg)
    load_weights(model, cfg.checkpointing.load, cfg.checkpointing.allow_unsafe_load)
    record_start(fabric, cfg, output_dir, started or RunStart(None, None), 0)
    model = fabric.to_device(model).eval()
    test_loader = TestLoader(cfg.dataset, cfg.data_loader.test, fabric.global_rank, fabric.world_size)
    return run_test(fabric, cfg, model, test_loader)


def shut_down(fabric: Fabric, stopped_by_signal: bool = False) -> None:
    """Leave the process group together: exiting with it alive can abort a rank during teardown.

    After a stop signal every rank exits with the same code (75). torchrun stops the other ranks with SIGTERM as
    soon as one rank has exited non-zero; a rank still tearing down then would die of it with another code, so
    from here on further stop signals are ignored (the checkpoint is saved; the process is about to exit).
    """
    if stopped_by_signal:
        ignore_signals(STOP_SIGNALS)
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
