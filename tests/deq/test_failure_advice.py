"""A failed solve says what the spectral radius of ``df/dz`` at the failed samples suggests (issue 18 item 3):
``rho >= 1`` (``f`` does not contract there) names Jacobian regularisation and the learning rate, ``rho < 1``
(contracts, too slowly for the budget) names the budget and Anderson/Broyden, and an ``f`` without a
differentiable path says the radius could not be measured. The measurement runs only when a solve fails."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from hf_deq.deq import DEQConvergenceError, DEQFixedPoint, failed_samples

DT = torch.float64


def _x(batch: int = 3, dim: int = 6, dtype=DT) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _raised(fn, z0, **kwargs) -> str:
    deq = DEQFixedPoint(kwargs.pop("solver", "fixed_point"), on_failure="raise", **kwargs)
    with pytest.raises(DEQConvergenceError) as err:
        deq(fn, z0)
    return str(err.value)


def _rho(message: str) -> float:
    return float(re.search(r"best iterate ~([0-9.e+-]+|inf)", message).group(1))


@pytest.mark.parametrize("context", ["no_grad", "enable_grad", "inference_mode"])
def test_a_cell_that_does_not_contract_names_jacobian_regularisation(context):
    x = _x()
    with getattr(torch, context)():
        message = _raised(lambda z: 1.5 * z + x, torch.zeros_like(x), max_iter=12, tol=1e-4)
    assert "(>= 1)" in message and "jacobian_reg_weight" in message and "learning rate" in message
    assert _rho(message) == pytest.approx(1.5, rel=1e-6)
    assert "max_iter" not in message  # no budget helps


def test_tanh_of_a_strong_linear_map_does_not_contract():
    w = 3.0 * torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=DT))[0]
    x = 1e-3 * _x()
    with torch.no_grad():
        message = _raised(lambda z: torch.tanh(z @ w.T) + x, torch.zeros_like(x), max_iter=20, tol=1e-6)
    assert "(>= 1)" in message and "jacobian_reg_weight" in message and _rho(message) >= 1.0


def test_a_slow_contraction_names_the_budget_and_the_measured_radius():
    """``f(z) = 0.99 z + x``, 3 iterations to 1e-6: relative residual ~0.25, far above tol (failed) though
    still falling: the radius is 0.99 and about 1000 more fixed-point steps would reach tol."""
    x = _x()
    with torch.no_grad():
        message = _raised(lambda z: 0.99 * z + x, torch.zeros_like(x), max_iter=3, tol=1e-6)
        assert _rho(message) == pytest.approx(0.99, rel=1e-6)
        assert "(< 1)" in message and "raise max_iter (config solver_max_iter)" in message
        assert "Anderson/Broyden" in message and "jacobian_reg_weight" not in message
        steps = int(re.search(r"about (\d+) more steps", message).group(1))
        assert 1000 < steps < 1600
        deq = DEQFixedPoint("fixed_point", max_iter=30, eval_max_iter=3, tol=1e-6, on_failure="raise").eval()
        with pytest.raises(DEQConvergenceError, match=r"raise eval_max_iter \(config solver_eval_max_iter\)"):
            deq(lambda z: 0.99 * z + x, torch.zeros_like(x))


def test_a_stalled_slow_solve_names_the_budget():
    """A 0.99-contraction whose iterate is kicked by +5 at every other call: the best residual (1.4-2.7,
    between 100x and 1000x tol) came in the first half of the budget for two samples, which fail by the stall
    rule of ``failed_samples`` alone; ``df/dz`` is still 0.99 I, so the advice is the budget."""
    x = _x()
    calls = {"n": 0}

    def kicked(z):
        calls["n"] += 1
        return 0.99 * z + x + (0.0 if calls["n"] % 2 else 5.0)

    kwargs = {"max_iter": 6, "tol": 1e-2, "stop_mode": "abs"}
    with torch.no_grad():
        _, result = DEQFixedPoint("fixed_point", on_failure="ignore", **kwargs)(kicked, torch.zeros_like(x))
        failed = failed_samples(result)
        assert failed.tolist() == [True, False, True]
        assert bool((result.residual[failed] < 1000 * 1e-2).all())  # not "far": stalled
        calls["n"] = 0
        message = _raised(kicked, torch.zeros_like(x), **kwargs)
    assert "for 2/3 samples" in message and "(< 1)" in message and "raise max_iter" in message
    assert _rho(message) == pytest.approx(0.99, rel=1e-6)


def test_no_differentiable_path_says_it_could_not_be_measured():
    x = _x()
    message = _raised(lambda z: 1.5 * z.detach() + x, torch.zeros_like(x), max_iter=12, tol=1e-4)
    assert "could not be measured" in message and "jacobian_reg_weight" in message


def test_under_bf16_autocast():
    layer = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        layer.weight.copy_(1.5 * torch.eye(8))
    x = _x(dim=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        message = _raised(lambda z: layer(z) + x, torch.zeros_like(x), max_iter=12, tol=1e-4)
    assert "(>= 1)" in message and _rho(message) == pytest.approx(1.5, rel=2e-2)


def test_the_measurement_runs_once_leaves_the_rng_alone_and_never_when_warned_already():
    x = _x()
    calls = {"n": 0}

    def fn(z):
        calls["n"] += 1
        return 1.5 * z + x

    deq = DEQFixedPoint("fixed_point", max_iter=6, tol=1e-4)
    state = torch.get_rng_state()
    counts = []
    with warnings.catch_warnings(record=True) as record, torch.no_grad():
        warnings.simplefilter("always")
        for _ in range(2):
            calls["n"] = 0
            deq(fn, torch.zeros_like(x))
            counts.append(calls["n"])
    assert torch.equal(torch.get_rng_state(), state)
    assert counts[0] == counts[1] + 1  # one recorded call of f for the measurement, none once warned
    found = [w for w in record if "DEQ solver" in str(w.message)]
    assert len(found) == 1 and "jacobian_reg_weight" in str(found[0].message)


def test_with_a_compiled_cell():
    x = _x()
    message = _raised(lambda z: 1.5 * z + x, torch.zeros_like(x), max_iter=12, tol=1e-4, compile_cell=True)
    assert "(>= 1)" in message and _rho(message) == pytest.approx(1.5, rel=1e-6)
