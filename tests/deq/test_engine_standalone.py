"""The engine is pure PyTorch: ``hf_deq.deq`` imports, solves and differentiates where the Hugging Face stack
is not installed (simulated in a subprocess by an import hook that refuses those packages)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HF_PACKAGES = (
    "transformers",
    "huggingface_hub",
    "accelerate",
    "datasets",
    "evaluate",
    "tokenizers",
    "safetensors",
)

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = {blocked!r}

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())

    import torch
    from hf_deq.deq import DEQFixedPoint, get_grad_estimator

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 6, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.mul_(0.3)
    x = torch.randn(4, 6, dtype=torch.float64)
    for solver in ("fixed_point", "anderson", "broyden"):
        for estimator in ("implicit", "upg", "npg", "one_step", "unrolled"):
            lin.zero_grad()
            deq = DEQFixedPoint(solver=solver, grad_estimator=get_grad_estimator(estimator), max_iter=40, tol=1e-8)
            z, result = deq(lambda z: torch.tanh(lin(z)) + x, torch.zeros_like(x))
            z.sum().backward()
            assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0, (solver, estimator)
            if estimator != "unrolled":  # unrolled backprop runs its own fixed depth
                assert bool(result.converged.all()), (solver, estimator, result.rel_residual)

    import hf_deq  # the package itself imports too: engine names work, model names explain what is missing

    assert hf_deq.DEQFixedPoint is DEQFixedPoint
    try:
        hf_deq.MDEQForImageClassification
    except ImportError as err:
        assert "transformers is not installed" in str(err), err
    else:
        raise AssertionError("model names must raise ImportError without transformers")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ENGINE-STANDALONE-OK")
    """
)


def test_engine_runs_without_the_hugging_face_stack():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=set(HF_PACKAGES))],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ENGINE-STANDALONE-OK" in proc.stdout
