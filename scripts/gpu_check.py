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

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import hf_deq
from hf_deq.training import solver_stats
from hf_deq.training.arguments import check_preset_config
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mdeq_preset", default="mdeq-tiny-cifar10", help="the MDEQ preset timed")
    parser.add_argument(
        "--lm_preset", default="deq-transformer-small", help="the DEQ-Transformer preset timed"
    )
    parser.add_argument("--image_batch", type=int, default=128, help="images per MDEQ step")
    parser.add_argument("--image_size", type=int, default=32, help="side of the random images")
    parser.add_argument("--lm_batch", type=int, default=16, help="sequences per LM step")
    parser.add_argument("--seq_len", type=int, default=256, help="tokens per LM sequence")
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per estimator (after 2 warm-up steps)"
    )
    parser.add_argument(
        "--estimators", default=",".join(ESTIMATORS), help="comma-separated gradient estimators to time"
    )
    parser.add_argument(
        "--mixed_precision",
        default="bf16",
        choices=["no", "bf16", "fp16"],
        help="autocast dtype of the steps",
    )
    parser.add_argument("--families", default="mdeq,lm", help="comma-separated families: mdeq, lm")
    parser.add_argument(
        "--variants",
        default="eager",
        help=f"comma-separated variants of the solve to time: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="run under FSDP2 (accelerate launch with scripts/configs/accelerate_fsdp2.yaml) and check its "
        "checkpoints and state dicts",
    )
    parser.add_argument(
        "--fsdp_processes",
        type=int,
        default=None,
        help="processes (GPUs) for --fsdp; default: the visible GPUs, at most 2 (1 also runs FSDP2)",
    )
    args = parser.parse_args(argv)
    for name in ("image_batch", "image_size", "lm_batch", "seq_len", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: must be an integer >= 1, got {getattr(args, name)}")
    for flag, value, allowed in (
        ("--estimators", args.estimators, hf_deq.available_grad_estimators()),
        ("--families", args.families, ["mdeq", "lm"]),
        ("--variants", args.variants, list(VARIANTS)),
    ):
        unknown = [v for v in value.split(",") if v not in allowed]
        if unknown:
            parser.error(f"argument {flag}: unknown {unknown}; choose from {allowed}")
    for flag, preset, model_type in (
        ("--mdeq_preset", args.mdeq_preset, "mdeq"),
        ("--lm_preset", args.lm_preset, "deq_transformer"),
    ):
        for variant in args.variants.split(","):
            check_preset_config(parser, preset, VARIANTS[variant], model_type=model_type, preset_flag=flag)
    return args


def make_batch(family: str, config, args, device) -> tuple[dict, int]:
    """Synthetic inputs and the number of items (images or tokens) they hold."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if family == "mdeq":
        pixels = torch.randn(
            args.image_batch, config.num_channels, args.image_size, args.image_size, generator=g
        )
        labels = torch.randint(0, config.num_labels, (args.image_batch,), generator=g)
        return {"pixel_values": pixels.to(device), "labels": labels.to(device)}, args.image_batch
    ids = torch.randint(0, config.vocab_size, (args.lm_batch, args.seq_len), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}, args.lm_batch * args.seq_len


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


def run_estimator(family: str, preset: str, estimator: str, args, variant: str = "eager") -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    model = hf_deq.create_model(
        preset, grad_estimator=estimator, solver_on_failure="ignore", **VARIANTS[variant]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    batch, items = make_batch(family, model.config, args, accelerator.device)
    torch.cuda.reset_peak_memory_stats()
    fwd, bwd, total, losses, nsteps = [], [], [], [], []
    grads_finite = True
    for step in range(args.steps + 2):
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


def check_fsdp(family: str, preset: str, args) -> dict:
    """What FSDP2 changes in the training loop, on one model: clipping sharded gradients, a sharded checkpoint
    round trip, the same full weights on every rank, the gathered full state dict for ``save_pretrained``."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, gather_object

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    model = hf_deq.create_model(preset, solver_on_failure="ignore")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    sync_buffers = BufferSync(model)
    batch, _ = make_batch(family, model.config, args, accelerator.device)

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


def launch_fsdp(argv: list[str], args) -> int:
    """Run this script again under ``accelerate launch`` with the FSDP2 config."""
    processes = args.fsdp_processes or min(torch.cuda.device_count(), 2)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
        "--num_processes", str(processes), "--mixed_precision", args.mixed_precision,
        __file__, *argv,
    ]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device; none is available here.")
        return 2
    under_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if args.fsdp and not under_fsdp:
        return launch_fsdp(argv, args)
    if under_fsdp:
        from accelerate import PartialState

        main_process = PartialState().is_main_process
        if not main_process:  # every rank runs the steps; rank 0 prints
            sys.stdout = open(os.devnull, "w")
    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; precision {args.mixed_precision}"
    )
    families = {"mdeq": args.mdeq_preset, "lm": args.lm_preset}
    rows = []
    for family in args.families.split(","):
        for estimator in args.estimators.split(","):
            for variant in args.variants.split(","):
                try:
                    rows.append(run_estimator(family, families[family], estimator, args, variant))
                except Exception as exc:  # report and go on: one failing row must not hide the others
                    rows.append(
                        {"family": family, "preset": families[family], "estimator": estimator,
                         "variant": variant, "error": repr(exc)}
                    )  # fmt: skip
                torch.cuda.empty_cache()
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
    for family in families:
        for variant in args.variants.split(","):
            if variant == "eager":
                continue
            for r in rows:
                base = next(
                    (b for b in rows if "error" not in b and b["variant"] == "eager"
                     and (b["family"], b["estimator"]) == (r["family"], r["estimator"])), None,
                )  # fmt: skip
                if base and r["family"] == family and r["variant"] == variant and "error" not in r:
                    print(
                        f"{families[family]} {r['estimator']}: step({variant}) / step(eager) = "
                        f"{r['step_ms'] / base['step_ms']:.2f}"
                    )
        by_name = {
            r["estimator"]: r
            for r in rows
            if r.get("family") == family and "error" not in r and r["variant"] == args.variants.split(",")[0]
        }
        if "implicit" in by_name:
            for other in ("upg", "npg"):
                if other in by_name:
                    ratio = by_name["implicit"]["bwd_ms"] / by_name[other]["bwd_ms"]
                    print(f"{families[family]}: backward(implicit) / backward({other}) = {ratio:.2f}")
    ok = all("error" not in r and r["finite"] for r in rows)
    if under_fsdp:
        print()
        print("| FSDP2 preset | sharded checkpoint | resume max abs loss diff | same weights on every rank | "
              "saved model = gathered weights |")  # fmt: skip
        print("|---|---|---|---|---|")
        for family in args.families.split(","):
            try:
                r = check_fsdp(family, families[family], args)
            except Exception as exc:  # report and go on, as above
                print(f"| {families[family]} | error: {exc!r:.120} ||||")
                ok = False
                continue
            print(
                f"| {r['preset']} | {r['sharded_checkpoint']} | {r['resume_max_diff']:.2e} | {r['same_weights']} | "
                f"{r['saved_matches']} |"
            )
            # The same batch from the same state: equal up to GPU non-determinism (bf16 atomics, cuDNN).
            resumed = r["resume_max_diff"] <= 1e-2
            ok = ok and resumed and r["sharded_checkpoint"] and r["same_weights"] and r["saved_matches"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
