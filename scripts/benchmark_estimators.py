#!/usr/bin/env python
"""Benchmark the DEQ engine's forward solvers and gradient estimators, optionally against torchdeq.

Two cells, both written as ``f(z) = cell(z, x_inj)`` on a flattened ``(B, D)`` state:

* ``conv``: an MDEQ-like residual block, ``GN(relu(z + GN(conv2(relu(GN(conv1(z))))) + x_inj))`` with
  weight-tied 3x3 convolutions, state ``(B, 32, 32, 32)``; ``x_inj`` is a convolution of a fixed random image.
* ``transformer``: a pre-LN causal transformer block (d_model 128, 4 heads, MLP 4x) on ``u = z + x_inj``:
  ``z' = LN(h + MLP(LN(h)))`` with ``h = u + attn(LN(u))``; ``x_inj`` is a learned embedding of fixed random
  token ids, state ``(B, 64, 128)``.

For each cell it prints (a) a forward-solver table, (b) a gradient-estimator table and (c) the peak memory of
a training step for forward budgets of 10 and 40 iterations, then checks the project's targets against the
numbers of the run. Every timing is the median of ``--repeats`` measurements after one warm-up; all cases of
a table are timed round-robin within each repeat, so that load from other processes hits them alike (quote
ratios from one run only). On CUDA every timed region is closed by ``torch.cuda.synchronize``. The solver
overhead per evaluation uses the time spent inside ``f`` during the same solve (``perf_counter`` around each
call on CPU, CUDA events on CUDA). On CPU the run uses one intra-op thread unless ``--threads`` says otherwise
(see its help).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation at the start of the measured region.
On CPU the same quantity is read from the PyTorch profiler (``profile_memory=True``): the peak of the bytes of
CPU tensors allocated inside the region and still alive (the running "Total Allocated" of the profiler's
memory events, minus its value at the start). Neither counts memory outside PyTorch tensors (oneDNN scratch
buffers, the allocator's cache, Python objects). Counts of function evaluations and backward passes come from
the untimed warm-up round, in which ``f`` counts its own calls and the backward passes through it.

With ``--compare-torchdeq`` the same cells, inputs and fixed point are run through torchdeq (pip install
--no-deps torchdeq; it is not a dependency of this project). Hyperparameters are aligned: Anderson memory 6,
regularization 1e-4, mixing 1 (torchdeq's defaults) in both libraries, forward and backward; Broyden keeps 20
rank-one updates in the forward solve (our default; torchdeq's ``LBFGS_thres=20``) and ``grad_max_iter``
updates in the backward solve (torchdeq always keeps ``b_max_iter`` there). The notes printed below the
tables state where the stop rules still differ.

Usage:
    python scripts/benchmark_estimators.py [--device cpu|cuda] [--compare-torchdeq]
        [--dtype float32|bfloat16] [--repeats N] [--cells conv,transformer] [--quick] [--threads N]

``--quick`` uses batch 4 on both cells and one timed repeat (a smoke run, not for quoting).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_deq.deq import DEQFixedPoint, get_grad_estimator, get_solver  # noqa: E402

FWD_TOL = 1e-3
FWD_MAX_ITER = 50
GRAD_TOL = 1e-6
GRAD_MAX_ITER = 50
ANDERSON_MEMORY = 6  # torchdeq's default m; our default is 5
ANDERSON_REG = 1e-4  # torchdeq's default lam (ours scales the system to unit diagonal first)
BROYDEN_MEMORY = 20  # our default; torchdeq gets LBFGS_thres=20 in the forward solve
PG_STEPS, PG_DAMPING = 5, 0.5
MEMORY_BUDGETS = (10, 40)


# --------------------------------------------------------------------------------------------------- cells


class Counter:
    """Counts calls of ``f`` and backward passes through it while ``enabled``."""

    def __init__(self) -> None:
        self.enabled = False
        self.forward = 0
        self.backward = 0

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0


class FClock:
    """Accumulates the time spent inside ``f`` while ``enabled`` (CUDA events on CUDA, so nothing syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = False
        self._total = 0.0
        self._events: list = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, token) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append((token, event))
        else:
            self._total += time.perf_counter() - token

    def take(self) -> float:
        """Seconds inside ``f`` since the last call (call after synchronising)."""
        total = self._total + sum(a.elapsed_time(b) for a, b in self._events) / 1e3
        self._total, self._events = 0.0, []
        return total


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counter: Counter) -> Tensor:
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.counter.backward += 1
        return grad, None


class ConvCell(nn.Module):
    """MDEQ-like residual block with weight-tied 3x3 convolutions and GroupNorm."""

    def __init__(self, channels: int = 32, size: int = 32, groups: int = 8) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.inject = nn.Conv2d(3, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, channels)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.gn3 = nn.GroupNorm(groups, channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=(1.0 / (9 * channels)) ** 0.5)
        # A strong injection (std ~2 against the unit-variance state) makes the map contractive enough for
        # Anderson to reach a relative residual of 1e-3 in ~15 evaluations.
        nn.init.normal_(self.inject.weight, std=2.0 * (1.0 / 27) ** 0.5)

    def make_input(self, batch: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch, 3, *self.shape[1:], generator=generator)

    def injection(self, x: Tensor) -> Tensor:
        return self.inject(x)

    def f(self, z: Tensor, x_inj: Tensor) -> Tensor:
        z4 = z.view(z.shape[0], *self.shape)
        y = F.relu(self.gn1(self.conv1(z4)))
        y = self.gn2(self.conv2(y))
        return self.gn3(F.relu(z4 + y + x_inj)).flatten(1)


class TransformerCell(nn.Module):
    """Pre-LN causal transformer block on ``z + x_inj`` with a final LayerNorm."""

    def __init__(self, d_model: int = 128, heads: int = 4, seq: int = 64, vocab: int = 1000) -> None:
        super().__init__()
        self.shape = (seq, d_model)
        self.heads = heads
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.ln_out = nn.LayerNorm(d_model)
        # Embedding std 0.4 against the unit-variance state: Anderson needs ~15 evaluations for 1e-3, about as
        # many as on the conv cell (std 1 makes the map so contractive that every solver needs ~5).
        nn.init.normal_(self.embed.weight, std=0.4)

    def make_input(self, batch: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.vocab, (batch, self.shape[0]), generator=generator)

    def injection(self, ids: Tensor) -> Tensor:
        return self.embed(ids)

    def f(self, z: Tensor, x_inj: Tensor) -> Tensor:
        batch = z.shape[0]
        seq, d = self.shape
        u = z.view(batch, seq, d) + x_inj
        q, k, v = (
            self.qkv(self.ln1(u)).view(batch, seq, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = u + self.proj(attn.transpose(1, 2).reshape(batch, seq, d))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.ln_out(h).flatten(1)


@dataclass
class Bench:
    """One cell with its fixed input, initial state, loss probe and the settings of the run."""

    name: str
    cell: nn.Module
    x: Tensor
    z0: Tensor
    probe: Tensor
    device: torch.device
    dtype: torch.dtype
    counter: Counter = field(default_factory=Counter)
    clock: FClock | None = None
    z_star: Tensor | None = None

    def injection(self, grad: bool = True) -> Tensor:
        with torch.set_grad_enabled(grad), self.autocast():
            return self.cell.injection(self.x)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def fn(self, x_inj: Tensor) -> Callable[[Tensor], Tensor]:
        cell, counter, clock = self.cell, self.counter, self.clock

        def f(z: Tensor) -> Tensor:
            token = clock.start() if clock is not None and clock.enabled else None
            with self.autocast():
                out = cell.f(z, x_inj)
            if token is not None:
                clock.stop(token)
            if counter.enabled:
                counter.forward += 1
                if out.requires_grad:
                    out = _CountBackward.apply(out, counter)
            return out

        return f

    def loss(self, z: Tensor) -> Tensor:
        return (z.float() * self.probe).sum()

    def zero_grad(self) -> None:
        for p in self.cell.parameters():
            p.grad = None

    def rel_residual(self, z: Tensor) -> float:
        """Max over the batch of ``||f(z) - z|| / ||f(z)||``, recomputed by this script for any solver."""
        with torch.no_grad():
            fz = self.fn(self.injection(grad=False))(z.to(self.z0.dtype)).float()
            return float(((fz - z.float()).norm(dim=1) / fz.norm(dim=1).clamp_min(1e-12)).max())


def build_bench(name: str, device: torch.device, dtype: torch.dtype, quick: bool, seed: int) -> Bench:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if name == "conv":
        cell, batch = ConvCell(), (4 if quick else 32)
    elif name == "transformer":
        cell, batch = TransformerCell(), (4 if quick else 16)
    else:
        raise ValueError(f"unknown cell {name!r}; choose from conv, transformer")
    x = cell.make_input(batch, gen)
    dim = math.prod(cell.shape)
    probe = torch.randn(batch, dim, generator=gen) / dim**0.5
    cell = cell.to(device)
    return Bench(
        name=name,
        cell=cell,
        x=x.to(device),
        z0=torch.zeros(batch, dim, device=device),
        probe=probe.to(device),
        device=device,
        dtype=dtype,
        clock=FClock(device),
    )


# --------------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_stderr():
    """The profiler writes status lines straight to fd 2; hide them while it runs."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(device: torch.device, run: Callable[[], object], setup: Callable[[], object] | None = None):
    """Peak bytes of tensors allocated by ``run`` above what was allocated when it started (see module doc).

    ``setup`` runs first, outside the measured region (e.g. dropping the previous step's gradients, so that
    freeing them inside the region does not hide the new ones).
    """
    if setup is not None:
        setup()
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        try:
            with quiet_stderr():
                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    run()
                prof.export_chrome_trace(path)
            with open(path) as fh:
                trace = json.load(fh)
        except Exception as exc:  # the profiler's trace format is not a stable API
            print(f"  (CPU memory measurement failed: {exc!r})")
            return None
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = [
        e["args"] for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0
    ]
    if not mem:
        return 0.0
    # "Total Allocated" is a process-wide running total; its value before the first event is the baseline.
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return float(max(0, max(m["Total Allocated"] for m in mem) - base))


class Timer:
    """Times named cases round-robin: one warm-up round, then ``repeats`` rounds; reports medians.

    The warm-up round is also the counting run: ``f`` counts its calls and the backward passes through it,
    and the value each case returns is kept (``counts``, ``outputs``).
    """

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device = device
        self.repeats = repeats
        self.counts: dict[str, tuple[int, int]] = {}
        self.outputs: dict[str, object] = {}
        self.f_times: dict[str, list[float]] = {}  # time inside f per timed repeat, when a clock is given
        self.raw: dict[str, list[float]] = {}  # every timed repeat

    def run(
        self,
        cases: dict[str, Callable[[], Callable[[], object]]],
        counter: Counter,
        clock: FClock | None = None,
    ) -> dict[str, float]:
        """``cases[name]()`` prepares one measurement (untimed) and returns the callable to time."""
        times: dict[str, list[float]] = {name: [] for name in cases}
        self.f_times = {name: [] for name in cases}
        for round_ in range(self.repeats + 1):
            for name, prepare in cases.items():
                timed = prepare()
                counter.reset()
                counter.enabled = round_ == 0
                if clock is not None:
                    clock.enabled = round_ > 0
                sync(self.device)
                start = time.perf_counter()
                out = timed()
                sync(self.device)
                elapsed = time.perf_counter() - start
                counter.enabled = False
                if clock is not None:
                    clock.enabled = False
                    f_time = clock.take()
                    if round_ > 0:
                        self.f_times[name].append(f_time)
                if round_ == 0:
                    self.counts[name] = (counter.forward, counter.backward)
                    self.outputs[name] = out
                else:
                    times[name].append(elapsed)
        self.raw = times
        return {name: statistics.median(ts) for name, ts in times.items()}


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def fmt_mib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def render(headers: list[str], rows: list[list[str]], td) -> str:
    """A table, without the comparison columns when torchdeq is not being compared."""
    if td is None:
        keep = [i for i, h in enumerate(headers) if "torchdeq" not in h]
        headers, rows = [headers[i] for i in keep], [[r[i] for i in keep] for r in rows]
    return table(headers, rows)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


# ------------------------------------------------------------------------------------------- our engine


def our_solver(name: str):
    if name == "anderson":
        return get_solver("anderson", memory=ANDERSON_MEMORY, regularization=ANDERSON_REG)
    if name == "broyden":
        return get_solver("broyden", memory=BROYDEN_MEMORY)
    return get_solver(name)


def our_estimators() -> dict[str, Callable[[], object]]:
    implicit = lambda solver, **kw: get_grad_estimator(  # noqa: E731
        "implicit", solver=solver, max_iter=GRAD_MAX_ITER, tol=GRAD_TOL, solver_kwargs=kw
    )
    return {
        "implicit [gmres]": lambda: implicit("gmres"),
        "implicit [anderson]": lambda: implicit(
            "anderson", memory=ANDERSON_MEMORY, regularization=ANDERSON_REG
        ),
        "implicit [broyden]": lambda: implicit("broyden", memory=GRAD_MAX_ITER),
        f"upg ({PG_STEPS}, {PG_DAMPING})": lambda: get_grad_estimator(
            "upg", steps=PG_STEPS, damping=PG_DAMPING
        ),
        f"npg ({PG_STEPS}, {PG_DAMPING})": lambda: get_grad_estimator(
            "npg", steps=PG_STEPS, damping=PG_DAMPING
        ),
        "one_step": lambda: get_grad_estimator("one_step"),
        f"unrolled ({PG_STEPS})": lambda: get_grad_estimator("unrolled", steps=PG_STEPS),
    }


def our_deq(solver: str, estimator, max_iter: int = FWD_MAX_ITER, tol: float = FWD_TOL) -> DEQFixedPoint:
    return DEQFixedPoint(our_solver(solver), estimator, max_iter=max_iter, tol=tol, on_failure="ignore")


# ------------------------------------------------------------------------------------------- torchdeq


def import_torchdeq():
    try:
        import torchdeq
        from torchdeq.utils.layer_utils import deq_decorator
    except Exception as exc:
        return None, exc
    return (torchdeq, deq_decorator), None


def their_deq(td, f_solver: str = "anderson", b_solver: str = "anderson", ift: bool = True, **kw):
    torchdeq, _ = td
    args = dict(
        core="indexing",
        f_solver=f_solver,
        b_solver=b_solver,
        f_max_iter=FWD_MAX_ITER,
        b_max_iter=GRAD_MAX_ITER,
        f_tol=FWD_TOL,
        b_tol=GRAD_TOL,
        f_stop_mode="rel",
        b_stop_mode="rel",
    )
    args.update(kw)
    if ift:
        args["ift"] = True
    else:
        args.update(grad=PG_STEPS, tau=PG_DAMPING)
    return torchdeq.get_deq(**args)


def their_solver_kwargs(solver: str) -> dict:
    # torchdeq's Anderson defaults (m=6, lam=1e-4, tau=1) are what ours is set to; Broyden gets our memory.
    return {"LBFGS_thres": BROYDEN_MEMORY} if solver == "broyden" else {}


# -------------------------------------------------------------------------------------------- tables


def forward_table(bench: Bench, timer: Timer, td) -> tuple[list[str], dict]:
    """Forward solves to rel residual FWD_TOL within FWD_MAX_ITER evaluations, no autograd."""
    x_inj = bench.injection(grad=False)
    fn = bench.fn(x_inj)
    specs: list[tuple[str, str, Callable[[], Tensor]]] = []
    for solver in ("fixed_point", "anderson", "broyden"):
        deq = our_deq(solver, "implicit").eval()
        specs.append((solver, "hf_deq", lambda deq=deq: deq(fn, bench.z0)))
    if td is not None:
        for solver in ("anderson", "broyden"):
            deq = their_deq(td, f_solver=solver).eval()
            kw = their_solver_kwargs(solver)
            specs.append((solver, "torchdeq", lambda deq=deq, kw=kw: deq(fn, bench.z0, solver_kwargs=kw)))

    with torch.no_grad():
        z_ref = bench.z_star = our_deq("anderson", "implicit").eval()(fn, bench.z0)[0].clone()
        cases = {"f x5": lambda: lambda: [fn(z_ref) for _ in range(5)]}
        cases.update({f"{solver}/{lib}": (lambda run=run: run) for solver, lib, run in specs})
        times = timer.run(cases, bench.counter, bench.clock)
        mems = {f"{solver}/{lib}": peak_memory(bench.device, run) for solver, lib, run in specs}
    f_alone = times["f x5"] / 5

    rows, summary, excl_f = [], {}, {}
    for solver, lib, _ in specs:
        key = f"{solver}/{lib}"
        nfev = timer.counts[key][0]
        out = timer.outputs[key]
        z = out[0] if lib == "hf_deq" else out[0][-1]
        if lib == "hf_deq":
            assert out[1].nfev == nfev, (out[1].nfev, nfev)  # SolverResult.nfev agrees with the count
        rel = bench.rel_residual(z)
        t = times[key]
        # Time inside f, measured within each timed solve: (solve - nfev * f) / nfev as % of f is
        # (solve - time in f) / time in f. The median over repeats of that ratio is robust to load changes
        # between solves, which a separately timed f is not.
        f_in = timer.f_times[key]
        ratios = [(total - ft) / ft * 100 for total, ft in zip(timer.raw[key], f_in)]
        overhead = statistics.median(ratios)
        f_time = statistics.median(f_in) / nfev
        excl_f[key] = statistics.median(total - ft for total, ft in zip(timer.raw[key], f_in))
        theirs = times.get(f"{solver}/torchdeq")
        ratio = fmt_ratio(t, theirs) if lib == "hf_deq" and theirs is not None else "-"
        reached = "" if rel <= FWD_TOL else " (missed)"
        summary[key] = {"time": t, "overhead": overhead, "nfev": nfev}
        rows.append(
            [solver, lib, fmt_ms(t), str(nfev), fmt_ms(f_time), f"{overhead:+.0f}%", f"{rel:.1e}{reached}"]
            + [fmt_mib(mems[key]), ratio]
        )
    headers = [
        "solver",
        "library",
        "solve ms",
        "nfev",
        "f ms (in solve)",
        "solve ms excl. f",
        "overhead/eval (% of f)",
        "rel residual",
    ]
    headers += ["peak MiB", "ours/torchdeq", "ours/torchdeq excl. f"]
    for row, (solver, lib, _) in zip(rows, specs):
        theirs = excl_f.get(f"{solver}/torchdeq")
        ours = excl_f[f"{solver}/{lib}"]
        row.insert(5, fmt_ms(ours))
        row.append(fmt_ratio(ours, theirs) if lib == "hf_deq" and theirs is not None else "-")
    return [
        f"### {bench.name}: forward solve (rel tol {FWD_TOL:g}, max_iter {FWD_MAX_ITER}, no autograd)",
        "",
        render(headers, rows, td),
        "",
        f'- f timed alone at z*: {fmt_ms(f_alone)} ms. "f ms (in solve)" is the mean time of one f call inside '
        "the solve; the overhead is (solve time - time inside f) / time inside f, median over repeats. The last "
        "column compares the solvers' own time (solve minus time inside f), which load on the machine disturbs "
        "less than the total.",
    ], summary


def estimator_table(bench: Bench, timer: Timer, td) -> tuple[list[str], dict]:
    """Backward (attach + loss.backward from a fixed z*) and the peak memory of a whole training step."""
    assert bench.z_star is not None
    z_star = bench.z_star
    specs = [(name, "hf_deq", make) for name, make in our_estimators().items()]
    if td is not None:
        specs += [
            ("ift [anderson]", "torchdeq", lambda: their_deq(td, b_solver="anderson")),
            ("ift [broyden]", "torchdeq", lambda: their_deq(td, b_solver="broyden")),
            (f"phantom ({PG_STEPS}, {PG_DAMPING})", "torchdeq", lambda: their_deq(td, ift=False)),
        ]
    backward_info: dict[str, dict] = {}

    def backward_case(name, lib, obj):
        """prepare() -> timed callable: attach + loss + backward from z* (from z0 for unrolled)."""

        def prepare():
            bench.zero_grad()
            x_inj = bench.injection()  # untimed: part of the model's forward, not of the estimator
            fn = bench.fn(x_inj)
            if lib == "hf_deq":
                start = z_star if obj.needs_fixed_point else bench.z0

                def go():
                    bench.loss(obj.attach(fn, start)).backward()

            else:
                _, deq_decorator = td
                wrapped, _ = deq_decorator(fn, z_star)
                info = backward_info.setdefault(name, {})

                def go():
                    (z,) = obj.produce_grad[-1](obj, wrapped, z_star, writer=info.update)
                    bench.loss(z).backward()

            return go

        return prepare

    def step_run(lib, obj):
        def run():
            fn = bench.fn(bench.injection())
            z = obj(fn, bench.z0)[0]
            bench.loss(z if lib == "hf_deq" else z[-1]).backward()

        return run

    objects, mems, cases = {}, {}, {}
    for name, lib, make in specs:
        est = make()
        if lib == "hf_deq":
            obj, step_obj = est, our_deq("anderson", est).train()
        else:
            obj = step_obj = est.train()
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
        jtv, res = "-", "-"
        if lib == "hf_deq" and name.startswith("implicit"):
            jtv, res = str(obj.last_backward.nfev), f"{float(obj.last_backward.rel_residual.max()):.1e}"
        elif lib == "hf_deq" and name.startswith("npg"):
            jtv = str(PG_STEPS - 1)
        elif lib == "torchdeq" and name.startswith("ift"):
            jtv = str(passes - 1)
            info = backward_info.get(name, {})
            if "rel_lowest" in info:
                their_res[name] = float(info["rel_lowest"].max())
                res = f"{their_res[name]:.1e}"
        rows.append([name, lib, fmt_ms(times[name]), jtv, str(passes), res, fmt_mib(mems[name])])

    their_ift = [times[n] for n in ("ift [anderson]", "ift [broyden]") if n in times]
    their_best_ift = min(their_ift) if their_ift else None
    upg_name, npg_name = f"upg ({PG_STEPS}, {PG_DAMPING})", f"npg ({PG_STEPS}, {PG_DAMPING})"
    phantom_name = f"phantom ({PG_STEPS}, {PG_DAMPING})"
    counterpart = {
        "implicit [gmres]": their_best_ift,
        "implicit [anderson]": times.get("ift [anderson]"),
        "implicit [broyden]": times.get("ift [broyden]"),
        upg_name: times.get(phantom_name),
    }
    for row, (name, lib, _) in zip(rows, specs):
        theirs = counterpart.get(name)
        row.append(fmt_ratio(times[name], theirs) if lib == "hf_deq" and theirs is not None else "-")
    headers = ["estimator", "library", "backward ms", "J^T v products", "backward passes through f"]
    headers += ["bwd rel residual", "train-step peak MiB", "ours/torchdeq"]
    t = times.get
    lines = [
        f"### {bench.name}: gradient estimators (backward = attach + loss.backward from a fixed z*; "
        f"grad tol {GRAD_TOL:g} rel, grad max_iter {GRAD_MAX_ITER})",
        "",
        render(headers, rows, td),
        "",
    ]
    for imp in ("implicit [gmres]", "implicit [anderson]"):
        lines.append(
            f"- backward({imp}) / backward(upg) = {fmt_ratio(t(imp), t(upg_name))}; "
            f"/ backward(npg) = {fmt_ratio(t(imp), t(npg_name))}"
        )
    if their_best_ift is not None:
        faster = min((n for n in ("ift [anderson]", "ift [broyden]") if n in times), key=times.__getitem__)
        lines.append(
            f"- implicit [gmres] / torchdeq's faster ift ({faster}) = {fmt_ratio(t('implicit [gmres]'), their_best_ift)}"
        )
        converged = [n for n, r in their_res.items() if r <= GRAD_TOL]
        if converged and faster not in converged:
            best = min(converged, key=times.__getitem__)
            lines.append(
                f"- {faster} stopped at its budget without reaching {GRAD_TOL:g}; against torchdeq's faster ift that "
                f"converged ({best}): implicit [gmres] / {best} = {fmt_ratio(t('implicit [gmres]'), times[best])}"
            )
    summary = {
        "implicit": t("implicit [gmres]"),
        "upg": t(upg_name),
        "npg": t(npg_name),
        "their_best_ift": their_best_ift,
        "their_phantom": t(phantom_name),
        "implicit_mem": mems["implicit [gmres]"],
        "npg_mem": mems[npg_name],
    }
    return lines, summary


def memory_table(bench: Bench, td) -> tuple[list[str], dict]:
    """Peak memory of a training step with forward budgets of 10 and 40 (tol 0: every budget is used)."""
    specs = [
        (
            "implicit [gmres]",
            "hf_deq",
            lambda it: our_deq("anderson", our_estimators()["implicit [gmres]"](), it, 0.0),
        ),
        (
            f"npg ({PG_STEPS}, {PG_DAMPING})",
            "hf_deq",
            lambda it: our_deq("anderson", our_estimators()[f"npg ({PG_STEPS}, {PG_DAMPING})"](), it, 0.0),
        ),
    ]
    if td is not None:
        specs.append(("ift [anderson]", "torchdeq", lambda it: their_deq(td, f_max_iter=it, f_tol=0.0)))
    rows, result = [], {}
    for name, lib, make in specs:
        mems = []
        for budget in MEMORY_BUDGETS:
            obj = make(budget).train()

            def run(obj=obj, lib=lib):
                fn = bench.fn(bench.injection())
                z = obj(fn, bench.z0)[0]
                bench.loss(z if lib == "hf_deq" else z[-1]).backward()

            bench.zero_grad()
            run()  # warm-up
            mems.append(peak_memory(bench.device, run, setup=bench.zero_grad))
        change = "n/a" if None in mems or not mems[0] else f"{(mems[1] - mems[0]) / mems[0] * 100:+.1f}%"
        result[(name, lib)] = mems
        rows.append([name, lib, *(fmt_mib(m) for m in mems), change])
    headers = ["estimator", "library", *(f"peak MiB, max_iter {b}" for b in MEMORY_BUDGETS), "change"]
    return [
        f"### {bench.name}: training-step peak memory vs forward budget (Anderson forward, tol 0 so the whole "
        "budget runs)",
        "",
        render(headers, rows, td),
    ], result


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument(
        "--compare-torchdeq", action="store_true", help="also run torchdeq (must be installed)"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype of f"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (median); default 3, quick 1"
    )
    parser.add_argument("--cells", default="conv,transformer")
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1; 0 keeps torch's default). On a shared machine OpenMP threads "
        "that lose their core stall every op: f took ~180 ms with 2 threads vs ~30 ms with 1 on a loaded 2-core box",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(cells) - {"conv", "transformer"})
    if unknown or not cells:
        parser.error(f"--cells takes a comma-separated subset of conv,transformer; got {args.cells!r}")

    td = None
    if args.compare_torchdeq:
        td, err = import_torchdeq()
        if td is None:
            print(
                f"torchdeq is not importable ({err!r}); install it without touching torch with "
                "`pip install --no-deps torchdeq`. Running without the comparison.\n"
            )

    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# DEQ engine benchmark ({dev_name}; torch {torch.__version__}; f under {args.dtype}; median of {repeats})"
    )
    if td is not None:
        print(f"torchdeq {getattr(td[0], '__version__', '0.1.x')} compared side by side in this run.")
    mem_label = (
        "torch.cuda.max_memory_allocated above the start of the region"
        if device.type == "cuda"
        else "peak bytes of CPU tensors allocated in the region (torch.profiler memory events)"
    )
    print(f"Memory: {mem_label}.")
    if dtype != torch.float32:
        print(
            f"f runs under {args.dtype} autocast (states and solver algebra stay float32). Its rounding puts a floor "
            "near 1e-3 under the relative residuals, so solves marked as missing their tolerance ran their whole "
            "budget: compare such rows per evaluation, not per tolerance."
        )
    print()

    timer = Timer(device, repeats)
    summaries = {}
    started = time.perf_counter()
    for name in cells:
        bench = build_bench(name, device, dtype, args.quick, args.seed)
        print(f"## {name} cell: batch {bench.z0.shape[0]}, state dim {bench.z0.shape[1]}\n")
        lines, fwd = forward_table(bench, timer, td)
        print("\n".join(lines), "\n", flush=True)
        lines, est = estimator_table(bench, timer, td)
        print("\n".join(lines), "\n", flush=True)
        lines, mem = memory_table(bench, td)
        print("\n".join(lines), "\n", flush=True)
        summaries[name] = (fwd, est, mem)

    print("\n".join(targets(summaries)), "\n")
    if td is not None:
        print(NOTES.format(fwd_tol=FWD_TOL, grad_tol=GRAD_TOL))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    return 0


def targets(summaries: dict) -> list[str]:
    """The project's targets, checked against this run's numbers (nothing is adjusted)."""
    lines = ["## Targets (this run)", ""]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    rows = []
    for cell, (fwd, est, mem) in summaries.items():
        ours, theirs = fwd.get("anderson/hf_deq"), fwd.get("anderson/torchdeq")
        if ours and theirs:
            r = ours["time"] / theirs["time"]
            rows.append(
                [
                    cell,
                    "anderson forward <= torchdeq (stretch 0.8x)",
                    f"{r:.2f}x",
                    verdict(r <= 1.0) + (" (stretch met)" if r <= 0.8 else ""),
                ]
            )
        for solver in ("anderson", "broyden"):
            o = fwd.get(f"{solver}/hf_deq")
            if o:
                rows.append(
                    [
                        cell,
                        f"{solver} overhead per f evaluation < 10%",
                        f"{o['overhead']:+.0f}%",
                        verdict(o["overhead"] < 10),
                    ]
                )
        if est["implicit"] and est["their_best_ift"]:
            r = est["implicit"] / est["their_best_ift"]
            rows.append(
                [cell, "implicit backward <= 0.7x torchdeq's faster ift", f"{r:.2f}x", verdict(r <= 0.7)]
            )
        if est["upg"] and est["their_phantom"]:
            r = est["upg"] / est["their_phantom"]
            rows.append([cell, "upg(5, 0.5) backward <= torchdeq phantom", f"{r:.2f}x", verdict(r <= 1.0)])
        if est["npg_mem"] is not None and est["implicit_mem"] is not None:
            rows.append(
                [
                    cell,
                    "npg train-step peak memory <= implicit's",
                    f"{fmt_mib(est['npg_mem'])} vs {fmt_mib(est['implicit_mem'])} MiB",
                    verdict(est["npg_mem"] <= est["implicit_mem"]),
                ]
            )
        for (name, lib), (m10, m40) in mem.items():
            if lib != "hf_deq":
                continue
            ok = None if None in (m10, m40) or not m10 else abs(m40 - m10) / m10 <= 0.05
            change = "n/a" if ok is None else f"{(m40 - m10) / m10 * 100:+.1f}%"
            rows.append([cell, f"{name} peak memory, max_iter 10 vs 40 within 5%", change, verdict(ok)])
    return lines + [table(["cell", "target", "measured", "verdict"], rows)]


NOTES = """Notes on alignment with torchdeq:
- Relative residual: both use ||f(z) - z|| / ||f(z)|| per sample (eps 1e-8 here, 1e-9 there); the "rel residual"
  column is recomputed by this script, max over the batch, for the iterate each library returns.
- Forward stop rule: ours stops once every sample's best residual is <= {fwd_tol:g}; torchdeq stops once the current
  iterate's residual is < {fwd_tol:g} for all samples at the same step. torchdeq's Anderson does not check its first
  two evaluations and returns f(z) of its best iterate; its Broyden may also stop after 30 steps without progress.
  "nfev" counts calls of f (both libraries), ours also reports SolverResult.nfev (equal).
- Backward: our implicit [anderson]/[broyden] and torchdeq's ift stop at rel residual {grad_tol:g} of u = J^T u + g
  (same definition). Our GMRES stops on the least-squares residual ||(I - J^T) u - g|| / ||g|| of its Krylov problem.
  "backward passes through f" counts every backward through f, i.e. J^T v products + 1 for the final pass to the
  parameters (implicit, npg, ift) or one per unrolled step (upg, one_step, unrolled, phantom).
- torchdeq's backward is timed through its own gradient functor (the module's produce_grad, as its forward calls
  it) from the same z*; its ift re-runs f(z*) with autograd inside the backward, ours records it at attach.
- unrolled starts from z0 (it needs no fixed point)."""


if __name__ == "__main__":
    sys.exit(main())
