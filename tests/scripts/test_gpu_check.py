"""``scripts/gpu_check.py`` needs CUDA: CI never runs its measurements, but it must import and say so clearly."""

from __future__ import annotations

import pytest
import torch
from script_loading import load_script


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine run the script itself")
def test_gpu_check_says_it_needs_cuda(capsys):
    script = load_script("gpu_check")
    args = script.parse_args(["--estimators", "upg,implicit", "--families", "mdeq"])
    assert (args.mixed_precision, args.mdeq_preset, args.lm_preset) == (
        "bf16",
        "mdeq-tiny-cifar10",
        "deq-transformer-small",
    )
    assert script.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().out
    assert script.parse_args(["--fsdp"]).fsdp
    assert script.main(["--fsdp", "--fsdp_processes", "2"]) == 2  # refuses before launching anything
    assert "needs a CUDA device" in capsys.readouterr().out
    assert script.FSDP_CONFIG.is_file()


def test_every_variant_of_the_solve_is_a_valid_config_of_both_presets():
    """``--variants``: eager, compiled cell, sync-free solver and both, checked at parse time like every flag."""
    import hf_deq

    script = load_script("gpu_check")
    args = script.parse_args(["--variants", ",".join(script.VARIANTS)])
    assert args.variants.split(",") == [
        "eager",
        "compiled",
        "sync_free",
        "compiled_sync_free",
        "compiled_solve",
        "compiled_solve_sync_free",
        "compiled_solve_check4",
    ]
    for preset in ("test_mdeq_tiny", "test_deq_transformer_tiny"):
        for overrides in script.VARIANTS.values():
            config = hf_deq.create_config(preset, **overrides)
            assert config.compile_cell is overrides.get("compile_cell", False)
            assert config.compile_solve is overrides.get("compile_solve", False)
            assert (config.solver_kwargs or {}).get("check_every", 1) == overrides.get(
                "solver_kwargs", {}
            ).get("check_every", 1)
    with pytest.raises(SystemExit):
        script.parse_args(["--variants", "eager,jit"])
