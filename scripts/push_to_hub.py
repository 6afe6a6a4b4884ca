"""Publish a saved hf_deq model on the Hugging Face Hub.

    python scripts/push_to_hub.py --model_dir outputs/mdeq-digits --repo_id alice/mdeq-tiny-digits [--private]

``--model_dir`` is what a training script (or ``save_pretrained``) wrote: safetensors weights, ``config.json``,
``generation_config.json``, the tokenizer or image processor, ``all_results.json``. The upload adds a model card
(rendered from the config, the metrics and the solver statistics) and the code that lets the repo load with
``trust_remote_code=True`` where hf_deq is not installed. The model directory itself is never modified: files are
staged in a temporary folder. ``--stage_only DIR`` writes that folder to DIR instead of uploading, to inspect it.

Authentication: ``HF_TOKEN`` or the token of ``hf auth login`` (or ``--token``). Exit status 0 on success,
2 for bad arguments (a malformed repo id, a missing or unusable model directory), 1 when the Hub refuses or
publishing fails; every failure is one ``error:`` line.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass
from pathlib import Path

from hf_deq.training.flags import FlagParser, flag


@dataclass
class PushArguments:
    """The flags of this script."""

    model_dir: str = flag(
        MISSING, "a saved hf_deq model: the folder a training script or save_pretrained wrote"
    )
    repo_id: str = flag(MISSING, "Hub repo id, 'namespace/name'")
    private: bool = flag(False, "create the repo as private")
    commit_message: str | None = flag(None, "message of the upload commit (default: 'Upload hf_deq model')")
    revision: str | None = flag(None, "branch to push to (default: main)")
    token: str | None = flag(None, "Hub token (default: HF_TOKEN or the `hf auth login` token)")
    license: str = flag("apache-2.0", "license of the card metadata")
    stage_only: str | None = flag(
        None, "write the staged repo into DIR (new or empty) and stop, without uploading", metavar="DIR"
    )


def build_parser() -> FlagParser:
    """The script's ``FlagParser``."""
    return FlagParser(PushArguments, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> PushArguments:
    """Parse and check what needs no model: a missing folder is reported at once."""
    parser = build_parser()
    (args,) = parser.parse_into_dataclasses(argv)
    model_dir = Path(args.model_dir)
    if not model_dir.exists():
        parser.error(
            f"--model_dir {model_dir}: the folder does not exist (pass the folder a training script's "
            "--output_dir or save_pretrained wrote)"
        )
    if not model_dir.is_dir():
        parser.error(f"--model_dir {model_dir}: a file, not a folder")
    if args.stage_only is not None:
        target = Path(args.stage_only)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            parser.error(f"--stage_only {target}: exists and is not an empty folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hf_deq import hub

    try:
        hub.check_repo_id(args.repo_id)
        hub.check_model_dir(args.model_dir)
    except hub.InvalidRepoIdError as err:
        build_parser().error(f"--repo_id: {err}")
    except hub.ModelDirError as err:
        build_parser().error(f"--model_dir: {err}")
    try:
        card = None  # a README.md the user wrote is kept; else the card is rendered here, with --license
        readme = Path(args.model_dir) / "README.md"
        if not readme.is_file() or hub.is_generated_card(readme):
            card = hub.render_model_card(args.model_dir, repo_id=args.repo_id, license=args.license)
        if args.stage_only:
            files = hub.stage_model_dir(args.model_dir, args.stage_only, repo_id=args.repo_id, card=card)
            print(f"staged {len(files)} files in {args.stage_only}: {', '.join(files)}")
            return 0
        info = hub.push_model_dir(
            args.model_dir,
            args.repo_id,
            private=args.private,
            commit_message=args.commit_message,
            token=args.token,
            card=card,
            revision=args.revision,
        )
    except (hub.HubPushError, hub.BundleError, ValueError, OSError) as err:
        message = " ".join(str(err).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"pushed {args.model_dir} to {info.repo_url} (commit {info.oid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
