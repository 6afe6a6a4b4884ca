"""Weight and spectral normalisation for DEQ cells, computed once per forward.

Both use ``torch.nn.utils.parametrize``. ``DEQFixedPoint`` evaluates ``f`` inside ``norm_cache()``, so a
normalised weight is computed once per solve (and once per gradient attachment) instead of at every solver
iteration, and nothing has to be reset by hand before a step.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.utils import parametrizations, parametrize

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def norm_cache():
    """Context in which every parametrised weight is computed once and reused."""
    return parametrize.cached()


def _targets(module: nn.Module, types: Iterable[type[nn.Module]]) -> list[nn.Module]:
    types = tuple(types)
    return [m for m in module.modules() if isinstance(m, types) and getattr(m, "weight", None) is not None]


def apply_weight_norm(module: nn.Module, types: Iterable[type[nn.Module]] = DEFAULT_TYPES) -> nn.Module:
    """``w = g * v / ||v||`` (Salimans & Kingma 2016) on the ``weight`` of every submodule of ``module`` that is
    an instance of one of ``types``; returns ``module``."""
    for m in _targets(module, types):
        if not parametrize.is_parametrized(m, "weight"):
            parametrizations.weight_norm(m, name="weight", dim=0)
    return module


def apply_spectral_norm(
    module: nn.Module, types: Iterable[type[nn.Module]] = DEFAULT_TYPES, n_power_iterations: int = 1
) -> nn.Module:
    """``w / sigma_max(w)`` (Miyato et al. 2018) on the ``weight`` of every submodule of ``module`` that is an
    instance of one of ``types``, ``sigma_max`` estimated by ``n_power_iterations`` per call; returns ``module``."""
    for m in _targets(module, types):
        if not parametrize.is_parametrized(m, "weight"):
            parametrizations.spectral_norm(m, name="weight", n_power_iterations=n_power_iterations)
    return module


def remove_norm(module: nn.Module) -> nn.Module:
    """Bake the normalised weights of ``module``'s submodules back into plain parameters; returns ``module``."""
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module
