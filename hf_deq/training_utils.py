"""Pieces shared by the training scripts in ``scripts/``: DEQ flags, output-dir safety, atomic checkpoints,
skipping non-finite steps. Kept free of any one model family."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .configuration_deq import DEQConfig
from .deq import available_grad_estimators, available_solvers

CHECKPOINT_PATTERN = re.compile(r"^(step|epoch)_(\d+)$")


def add_deq_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for every solver and estimator field of ``DEQConfig``; unset flags keep the preset's value."""
    group = parser.add_argument_group("DEQ solver and gradient estimator (default: the preset's)")
    group.add_argument("--solver", choices=[s for s in available_solvers() if s != "gmres"], default=None)
    group.add_argument("--solver_kwargs", type=json.loads, default=None, help="JSON, e.g. '{\"memory\": 5}'")
    group.add_argument("--solver_max_iter", type=int, default=None)
    group.add_argument("--solver_eval_max_iter", type=int, default=None)
    group.add_argument("--solver_tol", type=float, default=None)
    group.add_argument("--solver_stop_mode", choices=["rel", "abs"], default=None)
    group.add_argument("--solver_on_failure", choices=["warn", "raise", "ignore"], default=None)
    group.add_argument("--grad_estimator", choices=available_grad_estimators(), default=None)
    group.add_argument("--grad_steps", type=int, default=None, help="k of UPG/NPG")
    group.add_argument("--grad_damping", type=float, default=None, help="lambda of UPG/NPG")
    group.add_argument("--grad_solver", choices=available_solvers(), default=None)
    group.add_argument("--grad_max_iter", type=int, default=None)
    group.add_argument("--grad_tol", type=float, default=None)
    group.add_argument("--jacobian_reg_weight", type=float, default=None)
    group.add_argument(
        "--unrolled_warmup_steps",
        type=int,
        default=0,
        help="train the first N optimizer steps with plain backprop through unrolled iterations (grad_estimator "
        "'unrolled') before switching to the configured estimator",
    )
    group.add_argument(
        "--unrolled_warmup_depth",
        type=int,
        default=None,
        help="iterations unrolled in warm-up (default grad_steps)",
    )


def parse_args_with_config_file(
    parser: argparse.ArgumentParser, argv: list[str] | None, script: str
) -> argparse.Namespace:
    """Parse ``argv`` with ``--config FILE`` support: the file is a JSON object of flag values (keys are the
    flags' names without dashes, e.g. ``"learning_rate": 0.1``, ``"nesterov": true``) taken as defaults, so flags
    on the command line win. Keys starting with ``_`` are notes (``_description``, ``_source``); ``_script``, when
    given, must name this script. Every value is checked like its flag (type, choices) before anything runs."""
    parser.add_argument(
        "--config",
        metavar="JSON",
        default=None,
        help="a JSON file of flag values (see scripts/configs/); flags on the command line override it",
    )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**read_config_file(parser, known.config, script))
    return parser.parse_args(argv)


def read_config_file(parser: argparse.ArgumentParser, path: str | os.PathLike, script: str) -> dict[str, Any]:
    """The flag values of a ``--config`` JSON file, validated against ``parser``'s flags."""
    where = f"--config {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of flag values, got {type(data).__name__}")
    meant_for = data.get("_script")
    if meant_for is not None and meant_for != script:
        raise ValueError(f"{where} is a config for {meant_for}, not for {script}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        if key.startswith("_"):
            continue
        if key not in actions:
            raise ValueError(
                f"{where}: unknown key {key!r}; the keys are the flags of {script}: {sorted(actions)}"
            )
        values[key] = _config_value(actions[key], key, value, where)
    return values


def _config_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """``value`` checked and converted as the command line would do for ``--key``."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key!r} is a switch, so it takes true or false, got {value!r}")
        return value
    if isinstance(value, bool) or (isinstance(value, (list, dict)) and action.type is not json.loads):
        raise ValueError(f"{where}: {key!r} got {value!r}, which --{key} does not take")
    if action.type is None and isinstance(value, (int, float)):  # a string flag such as checkpointing_steps
        value = str(value)
    if action.type is int and not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    if action.type is float and isinstance(value, (int, float)):
        value = float(value)
    elif isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {key!r} got {value!r}: {err}") from None
    elif action.type is float:
        raise ValueError(f"{where}: {key!r} must be a number, got {value!r}")
    if value is not None and action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: {key!r} must be one of {list(action.choices)}, got {value!r}")
    return value


DEQ_ARGUMENT_NAMES = (*DEQConfig.SOLVER_FIELDS, *DEQConfig.GRAD_FIELDS, "jacobian_reg_weight")


def deq_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The DEQ config fields the user set on the command line."""
    return {name: getattr(args, name) for name in DEQ_ARGUMENT_NAMES if getattr(args, name, None) is not None}


def holds_a_model(output_dir: str | os.PathLike) -> bool:
    path = Path(output_dir)
    return path.is_dir() and any(
        (path / f).exists() for f in ("config.json", "model.safetensors", "all_results.json")
    )


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to write into a directory that already holds a model unless ``--overwrite_output_dir``
    (or ``--resume_from_checkpoint``, which continues that run)."""
    if holds_a_model(output_dir) and not (overwrite or resuming):
        raise SystemExit(
            f"--output_dir {output_dir} already holds a model; pass --overwrite_output_dir to replace it "
            "or --resume_from_checkpoint to continue that run."
        )


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``step_N`` / ``epoch_N``) in ``output_dir``, oldest first."""
    path = Path(output_dir)
    if not path.is_dir():
        return []
    found = [
        (int(m.group(2)), p) for p in path.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(resume_from: str, output_dir: str | os.PathLike) -> Path:
    """``--resume_from_checkpoint`` value to a folder: a path, or ``latest`` for the newest one."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise SystemExit(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}")
        return found[-1]
    path = Path(resume_from)
    if not path.is_dir():
        raise SystemExit(f"--resume_from_checkpoint {resume_from}: no such checkpoint folder")
    return path


def save_checkpoint_atomically(
    accelerator, output_dir: str | os.PathLike, name: str, extra: dict | None = None
) -> Path:
    """``accelerator.save_state`` into ``<name>.tmp``, then rename to ``<name>``: a crash while saving
    never leaves a half-written checkpoint under a name that resuming would pick."""
    final = Path(output_dir) / name
    tmp = Path(output_dir) / f"{name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if extra is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(extra, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


class EstimatorSchedule:
    """Plain backprop through unrolled iterations for the first ``warmup_steps`` optimizer steps, then the
    configured estimator (with its own ``grad_steps``, restored exactly)."""

    def __init__(self, model, warmup_steps: int, warmup_depth: int | None = None) -> None:
        self.model = model
        self.warmup_steps = warmup_steps
        config = model.config
        self.target = {"grad_estimator": config.grad_estimator, "grad_steps": config.grad_steps}
        self.warmup = {"grad_estimator": "unrolled", "grad_steps": warmup_depth or config.grad_steps}
        self.current: str | None = None

    def update(self, completed_steps: int) -> bool:
        """Set the estimator for the step after ``completed_steps``; True when it changed."""
        phase = "warmup" if completed_steps < self.warmup_steps else "target"
        if phase == self.current:
            return False
        fields = dict(self.warmup if phase == "warmup" else self.target)
        self.model.set_grad_estimator(fields.pop("grad_estimator"), **fields)
        self.current = phase
        return True

    def finish(self) -> None:
        """Back to the configured estimator, so that the saved config names it."""
        self.update(self.warmup_steps)


class NonFiniteStepGuard:
    """Skips training steps that would put NaN/inf into the weights, counts them, and stops the run after
    ``max_in_a_row`` such steps in a row (the last good checkpoint is kept: nothing is saved after a bad step).

    A step is bad when its loss is not finite (``check_loss``, before backward) or when its loss is finite but a
    gradient is not (``check_gradients``, after backward: a diverging backward solve of ``implicit``, bf16
    overflow in the Neumann/unrolled products). The caller skips a step either check refuses. Under fp16 loss
    scaling the scaler already skips and rescales on inf gradients (and must see them to lower the scale), so
    scripts pass ``inspect_gradients=False`` then. In multi-process runs the gradients are all-reduced first, so
    every rank decides alike."""

    def __init__(self, max_in_a_row: int = 10, inspect_gradients: bool = True) -> None:
        self.max_in_a_row = max_in_a_row
        self.inspect_gradients = inspect_gradients
        self.skipped = 0
        self.skipped_for_gradients = 0
        self.in_a_row = 0

    def _refuse(self, what: str) -> bool:
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise RuntimeError(
                f"{self.in_a_row} training steps in a row had a non-finite {what}; stopping. The last good "
                "checkpoint is kept; lower the learning rate, add Jacobian regularisation or use bf16-safe settings."
            )
        return False

    def check_loss(self, loss: torch.Tensor) -> bool:
        """True when the step may go on to backward; False when it must be skipped (and is counted)."""
        if torch.isfinite(loss.detach()).all():
            return True
        return self._refuse("loss")

    def check_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> bool:
        """True when every gradient is finite (the step may update the weights; the run of bad steps ends);
        False when the step must be skipped (and is counted)."""
        if not self.inspect_gradients or gradients_are_finite(parameters):
            self.in_a_row = 0
            return True
        self.skipped_for_gradients += 1
        return self._refuse("gradient")


def gradients_are_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every ``.grad`` is free of NaN/inf (one device sync)."""
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    if not flags:
        return True
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


class BufferRollback:
    """Undo what a skipped step's forward pass did to the model's buffers. Training-mode BatchNorm updates its
    running statistics during the forward, before the loss is known to be non-finite; without a rollback the NaN
    statistics of a skipped step would stay in the model, its later checkpoints and its evaluation.
    ``save()`` before the forward, ``restore()`` when the step is skipped (buffers are small: a copy per step)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = [b for b in model.buffers() if b is not None]
        self.saved: list[torch.Tensor] = []

    def save(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def restore(self) -> None:
        for buffer, saved in zip(self.buffers, self.saved):
            buffer.copy_(saved)


def log_step(path: str | os.PathLike, accelerator, record: dict[str, Any]) -> None:
    """``--log_file``: append ``record`` (plus ``process_index`` / ``num_processes``) as one JSON line. Process 0
    writes ``path``, process ``i > 0`` writes ``path.rank<i>``, so a multi-process run leaves one file per rank;
    a resumed run appends to the same file. Machine-readable per-step losses for tests and plots."""
    index = accelerator.process_index
    target = Path(path) if index == 0 else Path(f"{path}.rank{index}")
    line = {**record, "process_index": index, "num_processes": accelerator.num_processes}
    with open(target, "a") as f:
        f.write(json.dumps(line) + "\n")


def state_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of the parameters and of the whole ``state_dict`` (buffers included): equal fingerprints on every
    rank show that data-parallel training kept the replicas identical."""

    def digest(tensors) -> str:
        h = hashlib.sha256()
        for name, tensor in tensors:
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    return {
        "parameters_sha256": digest(sorted(model.named_parameters())),
        "state_dict_sha256": digest(sorted(model.state_dict().items())),
    }


def packaged_metric_path(name: str) -> str:
    """Path of an ``evaluate`` metric module shipped in ``hf_deq/metrics`` (e.g. ``"accuracy"``)."""
    path = Path(__file__).resolve().parent / "metrics" / f"{name}.py"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
        raise ValueError(f"no packaged metric {name!r}; available: {available}")
    return str(path)


def load_packaged_metric(name: str, **kwargs: Any):
    """``evaluate.load`` of a packaged metric by path: works offline (``evaluate.load("accuracy")`` fetches the
    module from the Hub). In multi-process runs call it under ``accelerator.main_process_first()``."""
    import evaluate

    return evaluate.load(packaged_metric_path(name), **kwargs)


def solver_stats(outputs) -> dict[str, float]:
    """Mean/max solver steps and mean residual of a model output, for logging."""
    nstep = outputs.solver_nstep.float()
    residual = outputs.solver_residual.float()
    finite = residual[torch.isfinite(residual)]
    return {
        "solver_nstep": float(nstep.mean()),
        "solver_nstep_max": float(nstep.max()),
        "solver_residual": float(finite.mean()) if finite.numel() else math.inf,
    }


__all__ = [
    "EstimatorSchedule",
    "BufferRollback",
    "NonFiniteStepGuard",
    "gradients_are_finite",
    "add_deq_arguments",
    "check_output_dir",
    "deq_overrides",
    "holds_a_model",
    "list_checkpoints",
    "load_packaged_metric",
    "log_step",
    "packaged_metric_path",
    "parse_args_with_config_file",
    "read_config_file",
    "resolve_checkpoint",
    "save_checkpoint_atomically",
    "solver_stats",
    "state_fingerprint",
]
