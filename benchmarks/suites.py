"""The three measurements of a cell, each returning plain rows (JSON-ready; times in ms, memory in MiB).

* ``forward_suite``: forward solves to ``FWD_TOL`` within ``FWD_MAX_ITER`` evaluations without autograd, with
  the solver's own overhead per evaluation of ``f``.
* ``estimator_suite``: each gradient estimator's backward (attach + loss.backward from a fixed ``z*``) and the
  peak memory of a whole training step.
* ``memory_suite``: the peak memory of a training step for forward budgets of 10 and 40 iterations.

``td`` is a ``torchdeq_adapter.TorchDEQ`` or ``None``; with it the same cells, inputs and fixed point also run
through torchdeq. Counts of function evaluations and backward passes come from the untimed warm-up round.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from .cells import Bench
from .engines import (
    FORWARD_SOLVERS,
    FWD_TOL,
    GRAD_TOL,
    MEMORY_BUDGETS,
    NPG,
    PG_STEPS,
    UPG,
    our_deq,
    our_estimators,
)
from .measure import Timer, peak_memory
from .torchdeq_adapter import (
    THEIR_IFT,
    THEIR_PHANTOM,
    THEIR_SOLVERS,
    TorchDEQ,
    their_deq,
    their_estimators,
    their_solver_kwargs,
)

MIB = 2**20


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _mib(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / MIB


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def forward_suite(bench: Bench, timer: Timer, td: TorchDEQ | None) -> dict:
    """Forward solves; sets ``bench.z_star`` (Anderson's fixed point) for the estimator suite."""
    x_inj = bench.injection(grad=False)
    fn = bench.fn(x_inj)
    specs: list[tuple[str, str, Callable[[], object]]] = []
    for solver in FORWARD_SOLVERS:
        deq = our_deq(solver, "implicit").eval()
        specs.append((solver, "hf_deq", lambda deq=deq: deq(fn, bench.z0)))
    if td is not None:
        for solver in THEIR_SOLVERS:
            deq = their_deq(td, f_solver=solver).eval()
            kw = their_solver_kwargs(solver)
            specs.append((solver, "torchdeq", lambda deq=deq, kw=kw: deq(fn, bench.z0, solver_kwargs=kw)))

    with torch.no_grad():
        z_ref = bench.z_star = our_deq("anderson", "implicit").eval()(fn, bench.z0)[0].clone()
        cases = {"f x5": lambda: lambda: [fn(z_ref) for _ in range(5)]}
        cases.update({f"{solver}/{lib}": (lambda run=run: run) for solver, lib, run in specs})
        times = timer.run(cases, bench.counter, bench.clock)
        mems = {f"{solver}/{lib}": peak_memory(bench.device, run) for solver, lib, run in specs}

    excl_f, rows = {}, []
    for solver, lib, _ in specs:
        key = f"{solver}/{lib}"
        nfev = timer.counts[key][0]
        out = timer.outputs[key]
        z = out[0] if lib == "hf_deq" else out[0][-1]
        if lib == "hf_deq" and out[1].nfev != nfev:
            raise RuntimeError(f"SolverResult.nfev {out[1].nfev} != counted calls of f {nfev} ({key})")
        rel = bench.rel_residual(z)
        # Time inside f, measured within each timed solve: (solve - time in f) / time in f. The median over
        # repeats of that ratio is robust to load changes between solves, which a separately timed f is not.
        f_in = timer.f_times[key]
        excl_f[key] = statistics.median(total - ft for total, ft in zip(timer.raw[key], f_in))
        rows.append(
            {
                "solver": solver,
                "library": lib,
                "solve_ms": _ms(times[key]),
                "nfev": nfev,
                "f_ms_in_solve": _ms(statistics.median(f_in) / nfev),
                "solve_excl_f_ms": _ms(excl_f[key]),
                "overhead_pct": statistics.median((t - ft) / ft * 100 for t, ft in zip(timer.raw[key], f_in)),
                "rel_residual": rel,
                "reached_tol": rel <= FWD_TOL,
                "peak_mib": _mib(mems[key]),
            }
        )
    for row in rows:
        mine, theirs = f"{row['solver']}/{row['library']}", f"{row['solver']}/torchdeq"
        ours = row["library"] == "hf_deq"
        row["time_vs_torchdeq"] = _ratio(times[mine], times.get(theirs)) if ours else None
        row["excl_f_vs_torchdeq"] = _ratio(excl_f[mine], excl_f.get(theirs)) if ours else None
    return {"f_alone_ms": _ms(times["f x5"] / 5), "rows": rows}


def estimator_suite(bench: Bench, timer: Timer, td: TorchDEQ | None) -> dict:
    """Backward from ``bench.z_star`` (from ``z0`` for estimators that need no fixed point) per estimator."""
    if bench.z_star is None:
        raise RuntimeError("run forward_suite first: the estimator suite starts from its fixed point")
    z_star = bench.z_star
    specs = [(name, "hf_deq", make) for name, make in our_estimators().items()]
    if td is not None:
        specs += [(name, "torchdeq", make) for name, make in their_estimators(td).items()]
    backward_info: dict[str, dict] = {}

    def backward_case(name, lib, obj):
        """prepare() -> timed callable: attach + loss + backward."""

        def prepare():
            bench.zero_grad()
            x_inj = bench.injection()  # untimed: part of the model's forward, not of the estimator
            fn = bench.fn(x_inj)
            if lib == "hf_deq":
                start = z_star if obj.needs_fixed_point else bench.z0

                def go():
                    bench.loss(obj.attach(fn, start)).backward()

            else:
                wrapped, _ = td.deq_decorator(fn, z_star)
                info = backward_info.setdefault(name, {})

                def go():
                    (z,) = obj.produce_grad[-1](obj, wrapped, z_star, writer=info.update)
                    bench.loss(z).backward()

            return go

        return prepare

    def step_run(lib, obj):
        def run():
            z = obj(bench.fn(bench.injection()), bench.z0)[0]
            bench.loss(z if lib == "hf_deq" else z[-1]).backward()

        return run

    objects, mems, cases = {}, {}, {}
    for name, lib, make in specs:
        est = make()
        obj, step_obj = (est, our_deq("anderson", est).train()) if lib == "hf_deq" else (est.train(),) * 2
        objects[name] = obj
        cases[name] = backward_case(name, lib, obj)
        step = step_run(lib, step_obj)
        bench.zero_grad()
        step()  # warm-up
        mems[name] = peak_memory(bench.device, step, setup=bench.zero_grad)
    times = timer.run(cases, bench.counter)

    rows, their_res = [], {}
    for name, lib, _ in specs:
        passes = timer.counts[name][1]
        obj = objects[name]
        jtv, res = None, None
        if lib == "hf_deq" and name.startswith("implicit"):
            jtv, res = obj.last_backward.nfev, float(obj.last_backward.rel_residual.max())
        elif lib == "hf_deq" and name.startswith("npg"):
            jtv = PG_STEPS - 1
        elif lib == "torchdeq" and name.startswith("ift"):
            jtv = passes - 1
            info = backward_info.get(name, {})
            if "rel_lowest" in info:
                res = their_res[name] = float(info["rel_lowest"].max())
        rows.append(
            {
                "estimator": name,
                "library": lib,
                "backward_ms": _ms(times[name]),
                "jtv_products": jtv,
                "backward_passes": passes,
                "backward_rel_residual": res,
                "train_step_peak_mib": _mib(mems[name]),
            }
        )

    their_ift = [n for n in THEIR_IFT if n in times]
    faster = min(their_ift, key=times.__getitem__) if their_ift else None
    counterpart = {"implicit [gmres]": faster, UPG: THEIR_PHANTOM}
    counterpart.update({f"implicit [{n[5:-1]}]": n for n in their_ift})
    for row in rows:
        theirs = counterpart.get(row["estimator"]) if row["library"] == "hf_deq" else None
        row["time_vs_torchdeq"] = _ratio(times[row["estimator"]], times.get(theirs)) if theirs else None

    ratios = {}
    for imp in ("implicit [gmres]", "implicit [anderson]"):
        for pg in (UPG, NPG):
            ratios[f"{imp} / {pg}"] = _ratio(times[imp], times[pg])
    converged = None
    if faster is not None:
        ratios[f"implicit [gmres] / {faster}"] = _ratio(times["implicit [gmres]"], times[faster])
        done = [n for n, r in their_res.items() if r <= GRAD_TOL]
        if done and faster not in done:
            converged = min(done, key=times.__getitem__)
            ratios[f"implicit [gmres] / {converged}"] = _ratio(times["implicit [gmres]"], times[converged])
    return {"rows": rows, "ratios": ratios, "their_faster_ift": faster, "their_converged_ift": converged}


def memory_suite(bench: Bench, td: TorchDEQ | None) -> dict:
    """Peak memory of a training step with forward budgets ``MEMORY_BUDGETS`` (tol 0: every budget is used)."""
    estimators = our_estimators()
    specs: list[tuple[str, str, Callable[[int], object]]] = [
        (name, "hf_deq", lambda it, name=name: our_deq("anderson", estimators[name](), it, 0.0))
        for name in ("implicit [gmres]", NPG)
    ]
    if td is not None:
        specs.append(("ift [anderson]", "torchdeq", lambda it: their_deq(td, f_max_iter=it, f_tol=0.0)))
    rows = []
    for name, lib, make in specs:
        mems = []
        for budget in MEMORY_BUDGETS:
            obj = make(budget).train()

            def run(obj=obj, lib=lib):
                z: Tensor = obj(bench.fn(bench.injection()), bench.z0)[0]
                bench.loss(z if lib == "hf_deq" else z[-1]).backward()

            bench.zero_grad()
            run()  # warm-up
            mems.append(peak_memory(bench.device, run, setup=bench.zero_grad))
        first, last = mems[0], mems[-1]
        change = None if None in (first, last) or not first else (last - first) / first * 100
        rows.append(
            {
                "estimator": name,
                "library": lib,
                "peak_mib_by_max_iter": {str(b): _mib(m) for b, m in zip(MEMORY_BUDGETS, mems)},
                "change_pct": change,
            }
        )
    return {"rows": rows}
