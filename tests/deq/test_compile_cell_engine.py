"""``DEQFixedPoint(compile_cell=True)``: the cell compiled with ``torch.compile`` (inductor) gives the eager
outputs and gradients for every estimator and for the Jacobian term, draws fresh dropout masks every forward,
and compiles in the first training step only (steps 2 and 3 reuse its graphs)."""

from __future__ import annotations

import pytest
import torch
from deq_helpers import ESTIMATORS, Cell
from torch import nn
from torch._dynamo.utils import counters

from hf_deq.deq import DEQFixedPoint, VariationalDropout, get_grad_estimator


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


class DropoutCell(Cell):
    """``Cell`` with a variational dropout on its output (one mask per forward)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.dropout = VariationalDropout(0.3)

    def forward(self, z, injection):
        return self.dropout(super().forward(z, injection))


def closure(cell: nn.Module, injection: torch.Tensor):
    """A new ``f`` every forward, as the models build it."""
    return lambda z: cell(z, injection)


def train_steps(cell: nn.Module, deq: DEQFixedPoint, steps: int = 3, seed: int = 0) -> list[dict]:
    """``steps`` forward + backward passes on fixed inputs; per step the outputs, gradients and the number of
    graphs compiled during that step."""
    gen = torch.Generator().manual_seed(seed)
    injection = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    probe = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    records = []
    torch.manual_seed(seed + 1)
    for _ in range(steps):
        before = compiled_graphs()
        cell.zero_grad()
        x = injection.clone().requires_grad_()
        z, result = deq(closure(cell, x), torch.zeros(3, 6, dtype=torch.float64))
        loss = (z * probe).sum()
        if result.jacobian_loss is not None:
            loss = loss + result.jacobian_loss
        loss.backward()
        records.append(
            {
                "z": z.detach(),
                "loss": loss.detach(),
                "x.grad": x.grad,
                **{n: p.grad.clone() for n, p in cell.named_parameters()},
                "new_graphs": compiled_graphs() - before,
            }
        )
    return records


def compare(eager: list[dict], compiled: list[dict], atol: float = 1e-10) -> None:
    assert compiled[0]["new_graphs"] > 0  # the compiled path ran (it did not fall back to eager)
    assert [r["new_graphs"] for r in compiled[1:]] == [0, 0]  # steps 2 and 3 reuse step 1's graphs
    for step, (e, c) in enumerate(zip(eager, compiled)):
        for key in e.keys() - {"new_graphs"}:
            torch.testing.assert_close(c[key], e[key], rtol=0, atol=atol, msg=f"{key} at step {step + 1}")


def make_deq(estimator: str, compile_cell: bool, **kwargs) -> DEQFixedPoint:
    return DEQFixedPoint(
        "anderson",
        get_grad_estimator(estimator, **ESTIMATORS[estimator]),
        max_iter=30,
        tol=1e-8,
        on_failure="ignore",
        compile_cell=compile_cell,
        **kwargs,
    ).train()


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_compiled_cell_equals_eager_for_every_estimator(estimator):
    torch.manual_seed(0)
    cell = Cell(6).double()
    eager = train_steps(cell, make_deq(estimator, False))
    compare(eager, train_steps(cell, make_deq(estimator, True)))


def test_compiled_jacobian_term_equals_eager():
    torch.manual_seed(0)
    cell = Cell(6).double()
    eager = train_steps(cell, make_deq("upg", False, jacobian_reg_weight=0.5))
    compiled = train_steps(cell, make_deq("upg", True, jacobian_reg_weight=0.5))
    assert (
        eager[0]["loss"] != train_steps(cell, make_deq("upg", False), steps=1)[0]["loss"]
    )  # the term counts
    compare(eager, compiled)


def test_compiled_cell_draws_new_dropout_masks_every_forward():
    torch.manual_seed(0)
    cell = DropoutCell(6).double().train()
    eager = train_steps(cell, make_deq("npg", False))
    compiled = train_steps(cell, make_deq("npg", True))
    compare(eager, compiled)
    assert not torch.equal(compiled[0]["z"], compiled[1]["z"])  # a new mask in the second forward


def test_compile_cell_option_is_checked_and_reconfigurable():
    with pytest.raises(ValueError, match="compile_cell must be True or False"):
        DEQFixedPoint(compile_cell="yes")
    deq = DEQFixedPoint()
    assert not deq.compile_cell and deq.compiled_cell is None
    deq.reconfigure(compile_cell=True)
    compiled = deq.compiled_cell
    assert deq.compile_cell and "compile_cell=True" in repr(deq)
    deq.reconfigure(compile_cell=True, max_iter=12)
    assert deq.compiled_cell is compiled and deq.max_iter == 12  # the graphs compiled so far are kept
