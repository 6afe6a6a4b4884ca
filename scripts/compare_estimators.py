#!/usr/bin/env python
"""Train the same MDEQ preset on the same data once per gradient estimator (same seed, same budget) and compare
accuracy, wall time, forward/backward time per step and memory. Writes ``compare_estimators.md`` (a markdown
table), ``compare_estimators.png`` (accuracy against training wall time) and ``compare_estimators.json`` into
``--output_dir``.

Every flag that is not listed below is a flag of ``scripts/train_mdeq_classifier.py`` (the shared training loop
``hf_deq.training`` with the ``image-classification`` task), passed on unchanged, e.g.::

    python scripts/compare_estimators.py --output_dir outputs/compare-digits -- \\
        --preset mdeq-tiny-digits --num_train_epochs 8 --seed 0 --torch_num_threads 1

By default each run is a fresh process (``python scripts/train_mdeq_classifier.py ...``), so that its peak
memory is its own and no state leaks between runs; ``--in_process`` trains in this process instead.
Timings are training time only (no evaluation, no start-up): compare them between runs of one invocation, on one
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hf_deq.tasks import get_task
from hf_deq.training import build_dataloaders, train
from hf_deq.training import parse_args as parse_training_args

SCRIPTS = Path(__file__).resolve().parent
TRAIN_SCRIPT = "train_mdeq_classifier.py"
TASK = get_task("image-classification")


def training_args(argv: list[str]):
    """``argv`` parsed as ``train_mdeq_classifier.py`` does."""
    return parse_training_args(TASK, argv, script=TRAIN_SCRIPT)


#: The estimators of the phantom-gradient paper and their flags (docs/design.md, "Training recipes").
RECIPES: dict[str, list[str]] = {
    "implicit": ["--grad_estimator", "implicit"],
    "upg": ["--grad_estimator", "upg", "--grad_steps", "5", "--grad_damping", "0.5"],
    "npg": ["--grad_estimator", "npg", "--grad_steps", "5", "--grad_damping", "0.5"],
    "one_step": ["--grad_estimator", "one_step"],
}
LABELS = {
    "implicit": "implicit",
    "upg": "UPG (k=5, λ=0.5)",
    "npg": "NPG (k=5, λ=0.5)",
    "one_step": "one-step",
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="where the table, plot and per-run folders go")
    parser.add_argument(
        "--estimators", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="default: all four"
    )
    parser.add_argument(
        "--reference", default="implicit", help="estimator whose accuracy the others must reach"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.005, help="accuracy tolerance (0.005 = 0.5 point)"
    )
    parser.add_argument("--in_process", action="store_true", help="run the trainings in this process")
    args, passthrough = parser.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    for reserved in ("--output_dir", "--grad_estimator", "--resume_from_checkpoint"):
        if reserved in passthrough:
            parser.error(f"{reserved} is set per run by this script")
    training_args(passthrough)  # fail early on a bad training flag
    return args, passthrough


def run_one(name: str, passthrough: list[str], output_dir: Path, in_process: bool) -> dict[str, Any]:
    """Train with estimator ``name``; return its results (``all_results.json`` plus the eval history)."""
    run_dir = output_dir / name
    argv = [
        *passthrough,
        *RECIPES[name],
        "--output_dir",
        str(run_dir),
        "--overwrite_output_dir",
        "--disable_tqdm",
    ]
    if in_process:
        results = train(TASK, training_args(argv))
    else:
        subprocess.run([sys.executable, str(SCRIPTS / TRAIN_SCRIPT), *argv], check=True, env=os.environ)
        results = json.loads((run_dir / "all_results.json").read_text())
        results["history"] = json.loads((run_dir / "history.json").read_text())
    results["saved_activations_mb"] = saved_activations_mb(argv)
    return results


def saved_activations_mb(argv: list[str]) -> float:
    """Megabytes of tensors autograd keeps for the backward of one training forward (parameters excluded):
    the memory that grows with the unrolled steps of UPG and stays O(1) for implicit / NPG."""
    import torch

    args = training_args([*argv, "--overwrite_output_dir"])
    torch.manual_seed(args.seed)
    raw = TASK.load_raw(args)
    model, processor = TASK.build_model(args, raw, None)
    train_dl, _ = build_dataloaders(args, TASK.load_data(args, raw, processor))
    batch = next(iter(train_dl))
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), tensor.untyped_storage().nbytes())
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values()) / 2**20


def time_to_reach(history: list[dict], accuracy: float) -> float | None:
    """Training time at the first evaluation whose accuracy is at least ``accuracy``."""
    for entry in history:
        if entry["eval_accuracy"] >= accuracy - 1e-12:
            return entry["train_time"]
    return None


def markdown_table(results: dict[str, dict], reference: str, tolerance: float) -> str:
    ref = results.get(reference)
    target = ref["eval_accuracy"] - tolerance if ref else None
    rows = [
        "| estimator | final accuracy | best accuracy | wall time / epoch (s) | forward / step (ms) | "
        "backward / step (ms) | saved activations (MB) | peak memory (MB) | time to reference accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        best = max(h["eval_accuracy"] for h in r["history"]) if r["history"] else r["eval_accuracy"]
        reach = "—"
        if ref is not None:
            t = time_to_reach(r["history"], target)
            reach = "not reached" if t is None else f"{t:.0f} s ({t / ref['train_runtime']:.2f}x)"
        rows.append(
            f"| {LABELS.get(name, name)} | {100 * r['eval_accuracy']:.2f}% | {100 * best:.2f}% | "
            f"{r['train_runtime'] / max(r['epoch'], 1e-9):.1f} | {1000 * r['forward_time_per_step']:.0f} | "
            f"{1000 * r['backward_time_per_step']:.0f} | {r['saved_activations_mb']:.1f} | "
            f"{r['peak_memory_mb']:.0f} | {reach} |"
        )
    notes = [
        "",
        f"Time to reference accuracy: training time until the first evaluation within {100 * tolerance:.1f} point "
        f"of `{reference}`'s final accuracy, and its ratio to `{reference}`'s total training time. Wall times "
        "exclude evaluation and start-up. Peak memory: CUDA peak allocation, or the process's peak resident set "
        "size on CPU (mostly the libraries); saved activations: tensors kept for the backward of one step.",
    ]
    return "\n".join(rows + notes) + "\n"


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, r in results.items():
        times = [0.0] + [h["train_time"] for h in r["history"]]
        accs = [None] + [100 * h["eval_accuracy"] for h in r["history"]]
        ax.plot(times[1:], accs[1:], marker="o", markersize=3, label=LABELS.get(name, name))
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args, passthrough = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in args.estimators:
        print(f"=== {name} ===", flush=True)
        results[name] = run_one(name, passthrough, output_dir, args.in_process)
        print(
            f"{name}: accuracy {results[name]['eval_accuracy']:.4f}, training time "
            f"{results[name]['train_runtime']:.1f}s",
            flush=True,
        )
    table = markdown_table(results, args.reference, args.tolerance)
    train_args = training_args(passthrough)
    title = f"{train_args.preset or train_args.model_name_or_path} on {train_args.dataset_name or train_args.train_dir}"
    (output_dir / "compare_estimators.md").write_text(f"### {title}\n\n{table}")
    (output_dir / "compare_estimators.json").write_text(json.dumps(results, indent=2))
    plot(results, output_dir / "compare_estimators.png", title)
    print(table)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
