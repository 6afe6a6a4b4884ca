#!/usr/bin/env python
"""Draw a training run's picture: training loss, evaluation metric, solver steps, residual and (when the run was
probed with ``--probe_steps``) gradient alignment over the optimizer steps, as ``<run_dir>/training_curves.png``
(the file the training loop writes at the end of a run; the model card links it).

    python scripts/plot_run.py --run_dir outputs/mdeq-tiny-digits
    python scripts/plot_run.py --run_dir outputs/run/step_200 --output step_200.png  # a checkpoint

``--run_dir`` is a finished run's ``--output_dir`` (its ``history.json`` / ``log_history.json``), a checkpoint
folder, or a folder of checkpoints (the newest one's ``trainer_state.json``: a run still going). An existing
picture is replaced only with ``--overwrite``. Needs matplotlib (``pip install matplotlib``). The drawing is
``hf_deq.training.run_plot``.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass
from pathlib import Path

from hf_deq.hub.model_dir import TRAINING_CURVES_FILE
from hf_deq.training.flags import FlagParser, flag
from hf_deq.training.run_plot import RunPlotError, plot_run


@dataclass
class PlotArguments:
    """The flags of this script."""

    run_dir: str = flag(MISSING, "a run's --output_dir, a checkpoint, or a checkpoints folder")
    output: str | None = flag(None, f"the PNG to write (default: <run_dir>/{TRAINING_CURVES_FILE})")
    overwrite: bool = flag(False, "replace the --output file if it exists")

    @property
    def target(self) -> Path:
        """The PNG to write: ``--output``, else ``<run_dir>/training_curves.png``."""
        return Path(self.output) if self.output else Path(self.run_dir) / TRAINING_CURVES_FILE


def parse_args(argv: list[str] | None = None) -> PlotArguments:
    """The checked flags: an existing ``--run_dir``, and a picture replaced only with ``--overwrite``."""
    parser = FlagParser(PlotArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_into_dataclasses(argv)
    if not Path(args.run_dir).is_dir():
        parser.error(f"argument --run_dir: {args.run_dir} is not a folder")
    if args.target.exists() and not args.overwrite:
        flag_name = "--output" if args.output else "--run_dir"
        parser.error(f"argument {flag_name}: {args.target} already exists; pass --overwrite to replace it")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    name = Path(sys.argv[0]).name if argv is None else "plot_run.py"
    try:
        path = plot_run(args.run_dir, args.target)
    except RunPlotError as err:
        print(f"{name}: error: argument --run_dir: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ImportError:
        print(f"{name}: error: matplotlib is not installed: pip install matplotlib", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
