"""Hub options of the training scripts: ``--push_to_hub``, ``--hub_model_id``, ``--hub_private_repo``,
``--hub_strategy``, ``--hub_token``; the repo-id check right after parsing and the push at the end (or at each
checkpoint)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import HubPushError, InvalidRepoIdError, check_repo_id
from .model_dir import SECRET_KEYS
from .push import push_model, push_model_dir


def _hub_flag(default: Any, help_text: str, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


@dataclasses.dataclass
class HubArguments:
    """The Hub flags of the training scripts (``hf_deq.training.flags.FlagParser`` makes them flags):
    ``push_to_hub`` (publish the final model), ``hub_model_id`` (the repo id), ``hub_private_repo``,
    ``hub_strategy`` (``end`` or ``checkpoint``) and ``hub_token``."""

    _argument_group_name = "Hugging Face Hub"

    push_to_hub: bool = _hub_flag(
        False, "publish the final model (card and remote code included) on the Hub (main process only)"
    )
    hub_model_id: str | None = _hub_flag(
        None, "repo id 'namespace/name' (default: the output_dir's name under your user)"
    )
    hub_private_repo: bool = _hub_flag(False, "create the repo as private")
    hub_strategy: str = _hub_flag(
        "end",
        "'end': push once after training; 'checkpoint': also push at every checkpoint",
        choices=["end", "checkpoint"],
    )
    hub_token: str | None = _hub_flag(
        None, "token with write access (default: HF_TOKEN or the `hf auth login` token)"
    )


def hub_repo_id(args: Any) -> str:
    """From the parsed ``args`` (``hub_model_id``, ``output_dir``): ``--hub_model_id``, or the name of
    ``--output_dir`` (created under the token's user)."""
    repo_id = args.hub_model_id
    if not repo_id:
        if not args.output_dir:
            raise InvalidRepoIdError(
                "--push_to_hub needs --hub_model_id (or an --output_dir to name the repo)"
            )
        repo_id = Path(args.output_dir).resolve().name
    return repo_id


def check_hub_args(args: Any) -> None:
    """Check the parsed ``args`` right after parsing, so that a malformed ``--hub_model_id`` stops the script
    before training, not after: raises ``InvalidRepoIdError`` (a ``ValueError`` naming the repo id)."""
    if args.push_to_hub:
        check_repo_id(hub_repo_id(args))


def _hardware() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        count = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return f"{count} x {name}" if count > 1 else name
    return f"CPU ({os.cpu_count()} cores)"


def training_info(args: Any) -> dict[str, Any]:
    """The JSON-able flags of a run (``args``: a typed arguments object or a mapping; secrets left out), with the hardware and the number of processes."""
    items = dict(args).items() if isinstance(args, Mapping) else vars(args).items()
    info: dict[str, Any] = {}
    for key, value in items:
        if SECRET_KEYS.search(key):
            continue
        if isinstance(value, (str, int, float, bool, type(None), list, tuple, dict)):
            info[key] = list(value) if isinstance(value, tuple) else value
        elif isinstance(value, os.PathLike):
            info[key] = os.fspath(value)
    info.setdefault("hardware", _hardware())
    try:
        from accelerate.state import PartialState

        info.setdefault("num_processes", PartialState().num_processes)
    except Exception:  # accelerate not initialised: leave it out
        pass
    return info


def push_from_args(
    args: Any,
    model_dir: str | os.PathLike | None = None,
    *,
    model=None,
    processing_class=None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    eval_inputs: Iterable[Mapping[str, torch.Tensor]] | None = None,
):
    """The training scripts' push, on the main process only. At the end (``step=None``) it publishes
    ``model_dir`` (the saved final model with its ``all_results.json``); at a checkpoint (``step=N``, pushed only
    with ``--hub_strategy checkpoint``) it publishes ``model`` from memory. Does nothing without
    ``--push_to_hub``. A failed checkpoint push warns and training goes on; a failed final push raises with the
    command that retries it. The flags come from the parsed ``args``; ``processing_class`` (tokenizer or image
    processor) is saved with an in-memory ``model``; ``metrics`` and ``eval_inputs`` go to the card."""
    if not args.push_to_hub:
        return None
    if step is not None and args.hub_strategy != "checkpoint":
        return None
    repo_id = hub_repo_id(args)
    private, token = bool(args.hub_private_repo), args.hub_token
    training = training_info(args)
    try:
        if step is not None or model_dir is None:
            if model is None:
                raise ValueError("push_from_args needs model_dir (end of training) or model (checkpoint)")
            return push_model(
                model,
                repo_id,
                processing_class=processing_class,
                private=private,
                token=token,
                metrics=metrics,
                training=training,
                eval_inputs=eval_inputs,
                commit_message=f"Training in progress, step {step}"
                if step is not None
                else "End of training",
            )
        return push_model_dir(
            model_dir,
            repo_id,
            private=private,
            token=token,
            metrics=metrics,
            training=training,
            eval_inputs=eval_inputs,
            commit_message="End of training",
        )
    except HubPushError as err:
        if step is not None:
            print(
                f"warning: pushing the step-{step} checkpoint failed, training goes on: {err}",
                file=sys.stderr,
            )
            return None
        retry = f"python scripts/push_to_hub.py --model_dir {model_dir} --repo_id {repo_id}" + (
            " --private" if private else ""
        )
        raise HubPushError(f"{err}\nThe trained model is saved in {model_dir}; retry with: {retry}") from err
