#!/usr/bin/env python
"""Train the same preset on the same data with each gradient estimator (implicit, UPG, NPG, one-step), over
several seeds at the same budget, and compare them: final metric (mean ± sample std over the seeds), forward +
backward time per step, wall time per step, saved activations, and the time each estimator takes to reach
``implicit``'s final metric. Writes ``compare_estimators.md`` (the table), ``compare_estimators.png`` (the metric
against training wall time, with error bars) and ``compare_estimators.json`` (every run and the summary) into
``--output_dir``.

``--task`` picks the family: ``image-classification`` (MDEQ, ``scripts/train_mdeq_classifier.py``, metric
``eval_accuracy``) or ``causal-lm`` (DEQ-Transformer, ``scripts/train_deq_lm.py``, metric ``eval_loss``). Every flag
after ``--`` is a flag of that training script (the shared loop ``hf_deq.training``), passed on unchanged;
``--seed`` and the estimator flags are set per run::

    python scripts/compare_estimators.py --output_dir outputs/compare-digits --seeds 0,1,2 -- \\
        --preset mdeq-tiny-digits --torch_num_threads 1
    python scripts/compare_estimators.py --task causal-lm --output_dir outputs/compare-char --seeds 0,1,2 -- \\
        --train_file input.txt --train_tokenizer char --preset deq-transformer-char --max_train_steps 400 \\
        --eval_steps 100 --torch_num_threads 1

The runs go seed by seed, every estimator within a seed, so that a change in the machine's load spreads over
the estimators. By default each run is a fresh process, so that no state leaks between runs; ``--in_process``
trains in this process instead. Timings are training time only (no evaluation, no start-up): compare them
between runs of one invocation, on one machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from benchmarks import estimator_comparison as ec
from hf_deq.tasks import available_tasks, get_task
from hf_deq.training import parse_args as parse_training_args
from hf_deq.training import train
from hf_deq.training.flag_ranges import NON_NEGATIVE
from hf_deq.training.flags import FlagParser, flag
from hf_deq.training.hooks import HubPushHook

SCRIPTS = Path(__file__).resolve().parent
RESERVED = (
    "--output_dir",
    "--seed",
    "--grad_estimator",
    "--grad_steps",
    "--grad_damping",
    "--resume_from_checkpoint",
)


def earlier_results(output_dir: Path) -> list[Path]:
    """What an earlier comparison left in ``output_dir``: its tables and plot, and its run folders."""
    if not output_dir.is_dir():
        return []
    names = {"compare_estimators.md", "compare_estimators.json", "compare_estimators.png"}
    return sorted(p for p in output_dir.iterdir() if p.name in names or (p.is_dir() and "-seed" in p.name))


ESTIMATORS = list(ec.recipes("image-classification"))


@dataclass(frozen=True)
class CompareFlags:
    """The flags of this script (every other flag goes to the training script)."""

    output_dir: str = flag(MISSING, "where the table, plot and per-run folders go")
    task: str = flag(
        "image-classification",
        "the family: image-classification (MDEQ) or causal-lm (DEQ-Transformer)",
        choices=[t for t in available_tasks() if t in ec.TRAIN_SCRIPTS],
    )
    seeds: str = flag("0,1,2", "comma-separated training seeds")
    estimators: list[str] = flag(
        list(ESTIMATORS), "the gradient estimators compared", choices=ESTIMATORS, nargs="+"
    )
    reference: str = flag("implicit", "whose final metric is the target", choices=ESTIMATORS)
    tolerance: float = flag(
        0.0,
        "move the target this much towards worse (e.g. 0.005 = half an accuracy point)",
        range=NON_NEGATIVE,
    )
    in_process: bool = flag(False, "run the trainings in this process")
    skip_existing: bool = flag(
        False, "reuse a run whose folder already holds all_results.json and history.json (same flags assumed)"
    )
    overwrite_output_dir: bool = flag(
        False,
        "replace the results of an earlier comparison in --output_dir (without it, and without "
        "--skip_existing, such a folder is refused)",
    )

    @property
    def seed_list(self) -> list[int]:
        """The seeds of ``--seeds`` (``ValueError`` unless distinct non-negative integers)."""
        return ec.parse_seeds(self.seeds)


def parse_args(argv: list[str] | None = None) -> tuple[CompareFlags, list[str]]:
    """``(the checked flags, the training script's flags)`` of ``argv``; a bad value is one ``error:`` line."""
    parser = FlagParser(CompareFlags, description=__doc__)
    flags, passthrough = parser.parse_into_dataclasses(argv, remaining=True)
    passthrough = [a for a in passthrough if a != "--"]
    try:
        ec.parse_seeds(flags.seeds)
    except ValueError as err:
        parser.error(f"argument --seeds: {err}")
    earlier = [p.name for p in earlier_results(Path(flags.output_dir))]
    if earlier and not (flags.overwrite_output_dir or flags.skip_existing):
        parser.error(
            f"argument --output_dir: {flags.output_dir} holds an earlier comparison ({', '.join(earlier[:4])}); "
            "pass --overwrite_output_dir to replace it or --skip_existing to reuse its finished runs"
        )
    for reserved in RESERVED:
        if any(a == reserved or a.startswith(f"{reserved}=") for a in passthrough):
            parser.error(f"argument {reserved}: is set per run by this script")
    parse_training_args(get_task(flags.task), passthrough, script=ec.TRAIN_SCRIPTS[flags.task])  # fail early
    return flags, passthrough


def run_one(flags: CompareFlags, name: str, seed: int, passthrough: list[str]) -> dict[str, Any]:
    """Train estimator ``name`` with ``seed``; return its results (``all_results.json`` plus the history)."""
    task, script = get_task(flags.task), ec.TRAIN_SCRIPTS[flags.task]
    run_dir = Path(flags.output_dir) / f"{name}-seed{seed}"
    argv = [*passthrough, *ec.recipes(flags.task)[name], "--seed", str(seed)]
    argv += ["--output_dir", str(run_dir), "--overwrite_output_dir", "--disable_tqdm"]
    files = run_dir / "all_results.json", run_dir / "history.json"
    if not (flags.skip_existing and all(f.is_file() for f in files)):
        if flags.in_process:
            train(task, parse_training_args(task, argv, script=script), hooks=[HubPushHook()])
        else:
            subprocess.run([sys.executable, str(SCRIPTS / script), *argv], check=True, env=os.environ)
    results = json.loads(files[0].read_text())
    results["history"] = json.loads(files[1].read_text())
    results["seed"] = seed
    if seed == flags.seed_list[0]:  # the same graph for every seed: measured once per estimator
        results["saved_activations_mb"] = ec.saved_activations_mb(
            task, parse_training_args(task, argv, script=script)
        )
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train every estimator with every seed, write and print the comparison; returns the runs and summary."""
    flags, passthrough = parse_args(argv)
    Path(flags.output_dir).mkdir(parents=True, exist_ok=True)
    metric, names = ec.METRICS[flags.task], ec.labels(flags.task)
    runs: dict[str, list[dict]] = {name: [] for name in flags.estimators}
    for seed in flags.seed_list:
        for name in flags.estimators:
            print(f"=== {name}, seed {seed} ===", flush=True)
            r = run_one(flags, name, seed, passthrough)
            runs[name].append(r)
            print(
                f"{name} seed {seed}: {metric.key} {r[metric.key]:.4f}, {r['train_runtime']:.1f}s", flush=True
            )
    summary = ec.summarize(runs, metric, flags.reference, flags.tolerance)
    first = runs[flags.estimators[0]][0]
    preset = parse_training_args(
        get_task(flags.task), passthrough, script=ec.TRAIN_SCRIPTS[flags.task]
    ).preset
    title = f"{preset or 'model'} on {first['dataset_name']}, {first['train_steps']} steps, seeds {flags.seed_list}"
    table = ec.markdown_table(summary, metric, names)
    out = Path(flags.output_dir)
    (out / "compare_estimators.md").write_text(f"### {title}\n\n{table}")
    (out / "compare_estimators.json").write_text(
        json.dumps({"runs": runs, "summary": ec.jsonable(summary)}, indent=2)
    )
    ec.plot(summary, metric, names, out / "compare_estimators.png", title)
    print(table)
    return {"runs": runs, "summary": summary}


if __name__ == "__main__":
    main(sys.argv[1:])
