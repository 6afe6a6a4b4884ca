"""What a finished run leaves behind: ``all_results.json``'s content (``final_results``) and the files written
into ``--output_dir`` next to the final model (``write_run_files``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..modeling_utils import count_parameters
from .checkpoints import HISTORY_FILE, LOG_HISTORY_FILE
from .errors import CheckpointSaveError
from .probe import probe_summary
from .record import write_training_record
from .run_plot import run_title, write_training_curves
from .tracking import peak_memory_mb

if TYPE_CHECKING:
    from .loop import Run


def final_results(run: Run) -> dict[str, Any]:
    """``all_results.json`` of ``run`` (``docs/design.md`` lists its keys)."""
    state, accelerator = run.state, run.accelerator
    return {
        "train_runtime": state.train_time,
        "train_cpu_runtime": state.train_cpu_time,
        "train_loss": state.train_loss,
        "train_loss_last_window": run.last_window_loss,
        "train_steps": state.completed_steps,
        "train_samples": len(run.data.train),
        "epoch": state.completed_steps / run.updates_per_epoch,
        **{k: v for k, v in run.last_evaluation.items() if k.startswith("eval_")},
        "skipped_nonfinite_steps": run.step.skipped,
        "num_parameters": count_parameters(run.unwrapped),
        "grad_estimator": run.grad_estimator,
        "solver": run.solver,
        "num_processes": accelerator.num_processes,
        "torch_num_threads": torch.get_num_threads(),
        "mixed_precision": accelerator.mixed_precision,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "forward_time_per_step": state.forward_time_per_step,
        "backward_time_per_step": state.backward_time_per_step,
        "unrolled_warmup_steps": run.args.unrolled_warmup_steps,
        "dataset_name": run.data.dataset_name,
        "dataset_config_name": run.data.dataset_config_name,
        **probe_summary(state.log_history),
    }


def write_run_files(run: Run, results: dict[str, Any]) -> None:
    """Save the final model (gathered under FSDP: every rank calls this) into ``--output_dir``, and on the main
    process its processing class, ``results`` as ``all_results.json``, the histories, the training record and
    ``training_curves.png``. An ``OSError`` is a ``CheckpointSaveError``."""
    accelerator, output_dir, state = run.accelerator, run.args.output_dir, run.state
    try:
        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(run.model)  # FSDP: gathered on every rank (a collective)
        run.unwrapped.save_pretrained(
            output_dir,
            is_main_process=accelerator.is_main_process,
            save_function=accelerator.save,
            state_dict=state_dict,
        )
        if accelerator.is_main_process:
            if run.processing_class is not None:
                run.processing_class.save_pretrained(output_dir)
            Path(output_dir, "all_results.json").write_text(json.dumps(results, indent=2))
            Path(output_dir, HISTORY_FILE).write_text(json.dumps(state.history, indent=2))
            Path(output_dir, LOG_HISTORY_FILE).write_text(json.dumps(state.log_history, indent=2))
            write_training_record(output_dir, run.task, run.args)
            title = run_title(output_dir)  # from the all_results.json just written
            write_training_curves(output_dir, state.history, state.log_history, title, run.logger.info)
        accelerator.wait_for_everyone()
    except OSError as err:
        raise CheckpointSaveError(
            f"could not write the final model into {output_dir} ({err.strerror or err}); the checkpoints "
            "written before are kept"
        ) from err


__all__ = ["final_results", "write_run_files"]
