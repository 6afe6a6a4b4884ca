"""The engine benchmark of ``scripts/benchmark_estimators.py``, in pieces that each read alone.

``cells`` (the conv and transformer cells), ``measure`` (counts, timing, memory), ``engines`` (shared settings
and hf_deq's solvers and estimators), ``torchdeq_adapter`` (the optional comparison; torchdeq is never needed),
``suites`` (forward, estimator and memory measurements as rows), ``tables`` (markdown), ``targets`` (checks),
``run`` (one whole benchmark as a JSON-ready dict). ``estimator_comparison`` is the training-level comparison of
``scripts/compare_estimators.py`` (seeds aggregated, time to the reference's metric, its table and plot).
``solve_setup``, ``op_counts`` and ``step_time`` measure the solve per engine variant for
``scripts/benchmark_solver_ops.py`` (operators per solver iteration, training-step time, solver overhead).
"""

from .cells import BATCH_SIZES, CELLS, Bench, build_bench
from .run import run_benchmark
from .targets import check_targets

__all__ = ["BATCH_SIZES", "CELLS", "Bench", "build_bench", "check_targets", "run_benchmark"]
