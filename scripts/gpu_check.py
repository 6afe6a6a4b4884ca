"""One short GPU run: a few bf16 training steps per gradient estimator for a small preset of each model,
through Accelerate. Prints step time, throughput, forward/backward time and peak GPU memory per estimator.

    python scripts/gpu_check.py                      # needs a CUDA device; CI never runs it
    python scripts/gpu_check.py --steps 6 --estimators upg,implicit
    python scripts/gpu_check.py --fsdp               # the same steps under FSDP2 (every visible GPU, at most 2)
    python scripts/gpu_check.py --variants eager,compiled,sync_free,compiled_sync_free,compiled_solve,compiled_solve_sync_free

``--variants`` times each estimator in each variant of the solve: ``eager`` (the config as saved), ``compiled``
(``compile_cell=True``), ``sync_free`` (the solver's ``check_every=None``: the host reads the stop test only at
the end of the budget; converged samples freeze on the device), both together, ``compiled_solve``
(``compile_solve=True``: one compiled solver step per iteration, CUDA graphs), that sync-free and that with the
host reading the stop test every 4 iterations (``compiled_solve_check4``). Every row also reports the
GPU's kernel time for one profiled step (``torch.profiler``) and its share of that step's wall time: a
launch-bound step keeps the GPU idle between small kernels and host syncs.

``--fsdp`` relaunches this script with ``accelerate launch --config_file scripts/configs/accelerate_fsdp2.yaml``
and adds, per model, a check of what FSDP changes in the training loop: gradient clipping of sharded gradients,
a sharded ``save_state``/``load_state`` round trip (the two steps after loading repeat the two steps after
saving), the same full weights on every rank, and a full state dict gathered for ``save_pretrained`` that
reloads to those weights.

Synthetic inputs (random images / token ids): the point is the speed and memory of the DEQ machinery in bf16,
not accuracy, and it runs where ``datasets`` is not installed.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import hf_deq
from benchmarks.flags import outside
from hf_deq.training import solver_stats
from hf_deq.training.arguments import check_preset_config
from hf_deq.training.flag_ranges import count_range
from hf_deq.training.flags import FlagParser, flag
from hf_deq.training.step import BufferSync, gradients_are_finite
from hf_deq.training.tracking import state_fingerprint

ESTIMATORS = ("implicit", "upg", "npg", "one_step", "unrolled")
#: config overrides of each variant of the solve that ``--variants`` compares
VARIANTS: dict[str, dict] = {
    "eager": {},
    "compiled": {"compile_cell": True},
    "sync_free": {"solver_kwargs": {"check_every": None}},
    "compiled_sync_free": {"compile_cell": True, "solver_kwargs": {"check_every": None}},
    "compiled_solve": {"compile_solve": True},
    "compiled_solve_sync_free": {"compile_solve": True, "solver_kwargs": {"check_every": None}},
    "compiled_solve_check4": {"compile_solve": True, "solver_kwargs": {"check_every": 4}},
}
FSDP_CONFIG = Path(__file__).resolve().parent / "configs" / "accelerate_fsdp2.yaml"


@dataclass(frozen=True)
class GpuCheckFlags:
    """The flags of this script."""

    mdeq_preset: str = flag("mdeq-tiny-cifar10", "the MDEQ preset timed")
    lm_preset: str = flag("deq-transformer-small", "the DEQ-Transformer preset timed")
    image_batch: int = flag(128, "images per MDEQ step", range=count_range(1))
    image_size: int = flag(32, "side of the random images", range=count_range(1))
    lm_batch: int = flag(16, "sequences per LM step", range=count_range(1))
    seq_len: int = flag(256, "tokens per LM sequence", range=count_range(1))
    steps: int = flag(5, "timed steps per estimator (after 2 warm-up steps)", range=count_range(1))
    estimators: str = flag(",".join(ESTIMATORS), "comma-separated gradient estimators to time")
    mixed_precision: str = flag("bf16", "autocast dtype of the steps", choices=["no", "bf16", "fp16"])
    families: str = flag("mdeq,lm", "comma-separated families: mdeq, lm")
    variants: str = flag("eager", f"comma-separated variants of the solve to time: {', '.join(VARIANTS)}")
    fsdp: bool = flag(
        False,
        "run under FSDP2 (accelerate launch with scripts/configs/accelerate_fsdp2.yaml) and check its "
        "checkpoints and state dicts",
    )
    fsdp_processes: int | None = flag(
        None, "processes (GPUs) for --fsdp; default: the visible GPUs, at most 2 (1 also runs FSDP2)"
    )

    @property
    def family_list(self) -> list[str]:
        """The families of ``--families``, in order."""
        return self.families.split(",")

    @property
    def estimator_list(self) -> list[str]:
        """The gradient estimators of ``--estimators``, in order."""
        return self.estimators.split(",")

    @property
    def variant_list(self) -> list[str]:
        """The variants of the solve of ``--variants``, in order."""
        return self.variants.split(",")

    @property
    def presets(self) -> dict[str, str]:
        """The preset timed for each family."""
        return {"mdeq": self.mdeq_preset, "lm": self.lm_preset}


def parse_args(argv: list[str] | None = None) -> GpuCheckFlags:
    """The checked flags of ``argv`` (``None``: the command line); a bad value is one ``error:`` line."""
    parser = FlagParser(GpuCheckFlags, description=__doc__)
    (flags,) = parser.parse_into_dataclasses(argv)
    for option, values, allowed in (
        ("--estimators", flags.estimator_list, hf_deq.available_grad_estimators()),
        ("--families", flags.family_list, ["mdeq", "lm"]),
        ("--variants", flags.variant_list, list(VARIANTS)),
    ):
        if unknown := outside(values, allowed):
            parser.error(f"argument {option}: unknown {unknown}; choose from {allowed}")
    for option, preset, model_type in (
        ("--mdeq_preset", flags.mdeq_preset, "mdeq"),
        ("--lm_preset", flags.lm_preset, "deq_transformer"),
    ):
        for variant in flags.variant_list:
            check_preset_config(parser, preset, VARIANTS[variant], model_type=model_type, preset_flag=option)
    return flags


def make_batch(family: str, config, flags: GpuCheckFlags, device) -> tuple[dict, int]:
    """Synthetic inputs and the number of items (images or tokens) they hold."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if family == "mdeq":
        pixels = torch.randn(
            flags.image_batch, config.num_channels, flags.image_size, flags.image_size, generator=g
        )
        labels = torch.randint(0, config.num_labels, (flags.image_batch,), generator=g)
        return {"pixel_values": pixels.to(device), "labels": labels.to(device)}, flags.image_batch
    ids = torch.randint(0, config.vocab_size, (flags.lm_batch, flags.seq_len), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}, flags.lm_batch * flags.seq_len


def kernel_time_ms(step) -> float:
    """Milliseconds of GPU kernels in one call of ``step()``, from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    # the profiler table's "Self CUDA time total": each kernel counted once (torch < 2.4 named it self_cuda_*)
    return (
        sum(
            getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
            for e in prof.key_averages()
        )
        / 1000.0
    )


def timed_steps(accelerator, model, optimizer, batch: dict, steps: int) -> tuple:
    """``(forward s, backward s, step s, losses, solver steps, gradients finite)`` of ``steps`` training steps
    after 2 warm-up steps (the lists hold one value per timed step)."""
    fwd, bwd, total, losses, nsteps = [], [], [], [], []
    grads_finite = True
    for step in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with accelerator.autocast():
            out = model(**batch)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        accelerator.backward(out.loss)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        optimizer.step()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        grads_finite = grads_finite and gradients_are_finite(model.parameters())  # sharded under FSDP
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            total.append(t3 - t0)
            losses.append(float(out.loss))
            nsteps.append(solver_stats(out)["solver_nstep"])
    return fwd, bwd, total, losses, nsteps, grads_finite


def run_estimator(
    family: str, preset: str, estimator: str, flags: GpuCheckFlags, variant: str = "eager"
) -> dict:
    """Time ``flags.steps`` training steps of ``preset`` with ``estimator`` in ``variant`` of the solve."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=flags.mixed_precision)
    torch.manual_seed(0)
    model = hf_deq.create_model(
        preset, grad_estimator=estimator, solver_on_failure="ignore", **VARIANTS[variant]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    batch, items = make_batch(family, model.config, flags, accelerator.device)
    torch.cuda.reset_peak_memory_stats()
    fwd, bwd, total, losses, nsteps, grads_finite = timed_steps(
        accelerator, model, optimizer, batch, flags.steps
    )
    step_time = statistics.median(total)

    def one_step() -> None:
        with accelerator.autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    kernel_ms = kernel_time_ms(one_step)
    return {
        "family": family,
        "preset": preset,
        "estimator": estimator,
        "variant": variant,
        "kernel_ms": kernel_ms,
        "gpu_busy": kernel_ms / (1000 * step_time),
        "step_ms": 1000 * step_time,
        "fwd_ms": 1000 * statistics.median(fwd),
        "bwd_ms": 1000 * statistics.median(bwd),
        "items_per_s": items / step_time,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": losses[-1],
        "finite": all(math.isfinite(v) for v in losses) and grads_finite,
        "nstep": statistics.mean(nsteps),
    }


def check_fsdp(family: str, preset: str, flags: GpuCheckFlags) -> dict:
    """What FSDP2 changes in the training loop, on one model: clipping sharded gradients, a sharded checkpoint
    round trip, the same full weights on every rank, the gathered full state dict for ``save_pretrained``."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, gather_object

    accelerator = Accelerator(mixed_precision=flags.mixed_precision)
    torch.manual_seed(0)
    model = hf_deq.create_model(preset, solver_on_failure="ignore")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    sync_buffers = BufferSync(model)
    batch, _ = make_batch(family, model.config, flags, accelerator.device)

    def step() -> float:
        with accelerator.autocast():
            loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync_buffers()
        return float(loss.detach())

    step()
    folder = [tempfile.mkdtemp(prefix="gpu_check_fsdp_") if accelerator.is_main_process else None]
    folder = Path(broadcast_object_list(folder)[0])
    accelerator.save_state(str(folder / "checkpoint"))
    after_save = [step(), step()]
    accelerator.load_state(str(folder / "checkpoint"))
    after_load = [step(), step()]
    fingerprints = gather_object([state_fingerprint(model)])  # every rank gathers the full weights
    state_dict = accelerator.get_state_dict(model)  # full on rank 0
    saved_matches = True
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(folder / "model", state_dict=state_dict)
        reloaded = type(accelerator.unwrap_model(model)).from_pretrained(folder / "model")
        saved_matches = state_fingerprint(reloaded) == fingerprints[0]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(folder)
    return {
        "family": family,
        "preset": preset,
        "sharded_checkpoint": (folder / "checkpoint" / "pytorch_model_fsdp_0").is_dir(),
        "resume_max_diff": max(abs(a - b) for a, b in zip(after_save, after_load)),
        "same_weights": all(f == fingerprints[0] for f in fingerprints),
        "saved_matches": saved_matches,
    }


def launch_fsdp(argv: list[str], flags: GpuCheckFlags) -> int:
    """Run this script again under ``accelerate launch`` with the FSDP2 config."""
    processes = flags.fsdp_processes or min(torch.cuda.device_count(), 2)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
        "--num_processes", str(processes), "--mixed_precision", flags.mixed_precision,
        __file__, *argv,
    ]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def timed_rows(flags: GpuCheckFlags) -> list[dict]:
    """One row per family, estimator and variant of the solve; a failing row holds its error (``"error"``)."""
    rows = []
    for family in flags.family_list:
        preset = flags.presets[family]
        for estimator in flags.estimator_list:
            for variant in flags.variant_list:
                try:
                    rows.append(run_estimator(family, preset, estimator, flags, variant))
                except Exception as exc:  # report and go on: one failing row must not hide the others
                    rows.append(
                        {"family": family, "preset": preset, "estimator": estimator,
                         "variant": variant, "error": repr(exc)}
                    )  # fmt: skip
                torch.cuda.empty_cache()
    return rows


def print_timing_table(rows: list[dict]) -> None:
    """The table of ``rows``: times, GPU busy share, throughput, peak memory, solver steps, finite losses."""
    unit = {"mdeq": "img/s", "lm": "tok/s"}
    print()
    print(
        "| preset | estimator | variant | step ms | fwd ms | bwd ms | kernel ms (GPU busy) | throughput | "
        "peak GiB | mean nstep | loss finite |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | {r['estimator']} | {r['variant']} | error: {r['error'][:80]} ||||||||")
            continue
        print(
            f"| {r['preset']} | {r['estimator']} | {r['variant']} | {r['step_ms']:.1f} | {r['fwd_ms']:.1f} | "
            f"{r['bwd_ms']:.1f} | {r['kernel_ms']:.1f} ({100 * r['gpu_busy']:.0f}%) | "
            f"{r['items_per_s']:.0f} {unit[r['family']]} | {r['peak_gib']:.2f} | {r['nstep']:.1f} | {r['finite']} |"
        )


def print_variant_ratios(rows: list[dict], flags: GpuCheckFlags, family: str) -> None:
    """Step time of every variant of the solve over the eager step, per estimator of ``family``."""
    for variant in flags.variant_list:
        if variant == "eager":
            continue
        for r in rows:
            base = next(
                (b for b in rows if "error" not in b and b["variant"] == "eager"
                 and (b["family"], b["estimator"]) == (r["family"], r["estimator"])), None,
            )  # fmt: skip
            if base and r["family"] == family and r["variant"] == variant and "error" not in r:
                print(
                    f"{flags.presets[family]} {r['estimator']}: step({variant}) / step(eager) = "
                    f"{r['step_ms'] / base['step_ms']:.2f}"
                )


def print_backward_ratios(rows: list[dict], flags: GpuCheckFlags, family: str) -> None:
    """Backward time of ``implicit`` over UPG's and NPG's in the first variant of the solve, for ``family``."""
    by_name = {
        r["estimator"]: r
        for r in rows
        if r.get("family") == family and "error" not in r and r["variant"] == flags.variant_list[0]
    }
    if "implicit" in by_name:
        for other in ("upg", "npg"):
            if other in by_name:
                ratio = by_name["implicit"]["bwd_ms"] / by_name[other]["bwd_ms"]
                print(f"{flags.presets[family]}: backward(implicit) / backward({other}) = {ratio:.2f}")


def fsdp_checks_pass(flags: GpuCheckFlags) -> bool:
    """Run ``check_fsdp`` on every family, print its table; whether every check passed."""
    ok = True
    print()
    print("| FSDP2 preset | sharded checkpoint | resume max abs loss diff | same weights on every rank | "
          "saved model = gathered weights |")  # fmt: skip
    print("|---|---|---|---|---|")
    for family in flags.family_list:
        try:
            r = check_fsdp(family, flags.presets[family], flags)
        except Exception as exc:  # report and go on, as above
            print(f"| {flags.presets[family]} | error: {exc!r:.120} ||||")
            ok = False
            continue
        print(
            f"| {r['preset']} | {r['sharded_checkpoint']} | {r['resume_max_diff']:.2e} | {r['same_weights']} | "
            f"{r['saved_matches']} |"
        )
        # The same batch from the same state: equal up to GPU non-determinism (bf16 atomics, cuDNN).
        resumed = r["resume_max_diff"] <= 1e-2
        ok = ok and resumed and r["sharded_checkpoint"] and r["same_weights"] and r["saved_matches"]
    return ok


def main(argv: list[str] | None = None) -> int:
    """Time every family, estimator and variant (and, under FSDP, check it); 0 when every loss was finite and
    every check passed, 1 otherwise, 2 without a CUDA device."""
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device; none is available here.")
        return 2
    under_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if flags.fsdp and not under_fsdp:
        return launch_fsdp(argv, flags)
    if under_fsdp:
        from accelerate import PartialState

        main_process = PartialState().is_main_process
        if not main_process:  # every rank runs the steps; rank 0 prints
            sys.stdout = open(os.devnull, "w")
    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; precision {flags.mixed_precision}"
    )
    rows = timed_rows(flags)
    print_timing_table(rows)
    for family in flags.presets:
        print_variant_ratios(rows, flags, family)
        print_backward_ratios(rows, flags, family)
    ok = all("error" not in r and r["finite"] for r in rows)
    if under_fsdp:
        ok = fsdp_checks_pass(flags) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
