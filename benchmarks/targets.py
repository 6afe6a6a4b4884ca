"""The project's speed and memory targets, checked against one run's numbers (nothing is adjusted).

Each check is a row ``{"cell", "target", "measured", "value", "met"}``; ``met`` is ``None`` when the run has
no number for it (e.g. torchdeq was not compared).
"""

from __future__ import annotations

from .engines import MEMORY_BUDGETS, NPG, UPG
from .torchdeq_adapter import THEIR_PHANTOM

#: Solver overhead per evaluation of f, in % of f, that each forward solver must stay under.
MAX_OVERHEAD_PCT = {"anderson": 10.0, "broyden": 15.0}
#: Anderson forward time against torchdeq's Anderson, at most.
MAX_FORWARD_VS_TORCHDEQ = 0.8
#: implicit [gmres] backward against torchdeq's faster ift, at most.
MAX_IMPLICIT_VS_TORCHDEQ = 0.7
#: Training-step peak memory may change by at most this much from the smallest to the largest forward budget.
MAX_MEMORY_CHANGE_PCT = 5.0


def _row(cell: str, target: str, measured: str, value: float | None, met: bool | None) -> dict:
    return {"cell": cell, "target": target, "measured": measured, "value": value, "met": met}


def check_targets(cells: dict[str, dict]) -> list[dict]:
    """``cells`` maps a cell name to its ``{"forward", "estimators", "memory"}`` suite results."""
    rows = []
    for cell, result in cells.items():
        forward = {(r["solver"], r["library"]): r for r in result["forward"]["rows"]}
        anderson = forward.get(("anderson", "hf_deq"), {})
        if anderson.get("time_vs_torchdeq") is not None:
            r = anderson["time_vs_torchdeq"]
            rows.append(
                _row(
                    cell,
                    f"anderson forward <= {MAX_FORWARD_VS_TORCHDEQ}x torchdeq",
                    f"{r:.2f}x",
                    r,
                    r <= MAX_FORWARD_VS_TORCHDEQ,
                )
            )
        for solver, limit in MAX_OVERHEAD_PCT.items():
            if (solver, "hf_deq") in forward:
                o = forward[(solver, "hf_deq")]["overhead_pct"]
                rows.append(
                    _row(cell, f"{solver} overhead per f evaluation < {limit:g}%", f"{o:+.0f}%", o, o < limit)
                )
        est = {r["estimator"]: r for r in result["estimators"]["rows"]}
        r = est["implicit [gmres]"]["time_vs_torchdeq"]
        if r is not None:
            rows.append(
                _row(
                    cell,
                    f"implicit backward <= {MAX_IMPLICIT_VS_TORCHDEQ}x torchdeq's faster ift",
                    f"{r:.2f}x",
                    r,
                    r <= MAX_IMPLICIT_VS_TORCHDEQ,
                )
            )
        r = est[UPG]["time_vs_torchdeq"]
        if r is not None:
            rows.append(_row(cell, f"{UPG} backward <= torchdeq {THEIR_PHANTOM}", f"{r:.2f}x", r, r <= 1.0))
        npg, implicit = est[NPG]["train_step_peak_mib"], est["implicit [gmres]"]["train_step_peak_mib"]
        if None not in (npg, implicit):
            rows.append(
                _row(
                    cell,
                    "npg train-step peak memory <= implicit's",
                    f"{npg:.1f} vs {implicit:.1f} MiB",
                    npg - implicit,
                    npg <= implicit,
                )
            )
        for mem in result["memory"]["rows"]:
            if mem["library"] != "hf_deq":
                continue
            change = mem["change_pct"]
            target = (
                f"{mem['estimator']} peak memory, max_iter {MEMORY_BUDGETS[0]} vs {MEMORY_BUDGETS[-1]} within "
                f"{MAX_MEMORY_CHANGE_PCT:g}%"
            )
            measured = "n/a" if change is None else f"{change:+.1f}%"
            rows.append(
                _row(
                    cell,
                    target,
                    measured,
                    change,
                    None if change is None else abs(change) <= MAX_MEMORY_CHANGE_PCT,
                )
            )
    return rows
