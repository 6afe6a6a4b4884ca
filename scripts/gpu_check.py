"""One short GPU run: a few bf16 training steps per gradient estimator for a small preset of each model,
through Accelerate. Prints step time, throughput, forward/backward time and peak GPU memory per estimator.

    python scripts/gpu_check.py                      # needs a CUDA device; CI never runs it
    python scripts/gpu_check.py --steps 6 --estimators upg,implicit

Synthetic inputs (random images / token ids): the point is the speed and memory of the DEQ machinery in bf16,
not accuracy, and it runs where ``datasets`` is not installed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

import hf_deq
from hf_deq.training import solver_stats
from hf_deq.training.arguments import check_preset_config

ESTIMATORS = ("implicit", "upg", "npg", "one_step", "unrolled")


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
    args = parser.parse_args(argv)
    for name in ("image_batch", "image_size", "lm_batch", "seq_len", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name}: must be an integer >= 1, got {getattr(args, name)}")
    for flag, value, allowed in (
        ("--estimators", args.estimators, hf_deq.available_grad_estimators()),
        ("--families", args.families, ["mdeq", "lm"]),
    ):
        unknown = [v for v in value.split(",") if v not in allowed]
        if unknown:
            parser.error(f"argument {flag}: unknown {unknown}; choose from {allowed}")
    for flag, preset, model_type in (
        ("--mdeq_preset", args.mdeq_preset, "mdeq"),
        ("--lm_preset", args.lm_preset, "deq_transformer"),
    ):
        check_preset_config(parser, preset, model_type=model_type, preset_flag=flag)
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


def run_estimator(family: str, preset: str, estimator: str, args) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    model = hf_deq.create_model(preset, grad_estimator=estimator, solver_on_failure="ignore")
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
        grads_finite = grads_finite and all(
            bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None
        )
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            total.append(t3 - t0)
            losses.append(float(out.loss))
            nsteps.append(solver_stats(out)["solver_nstep"])
    step_time = statistics.median(total)
    return {
        "family": family,
        "preset": preset,
        "estimator": estimator,
        "step_ms": 1000 * step_time,
        "fwd_ms": 1000 * statistics.median(fwd),
        "bwd_ms": 1000 * statistics.median(bwd),
        "items_per_s": items / step_time,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": losses[-1],
        "finite": all(math.isfinite(v) for v in losses) and grads_finite,
        "nstep": statistics.mean(nsteps),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device; none is available here.")
        return 2
    print(
        f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; precision {args.mixed_precision}"
    )
    families = {"mdeq": args.mdeq_preset, "lm": args.lm_preset}
    rows = []
    for family in args.families.split(","):
        for estimator in args.estimators.split(","):
            try:
                rows.append(run_estimator(family, families[family], estimator, args))
            except Exception as exc:  # report and go on: one failing estimator must not hide the others
                rows.append(
                    {"family": family, "preset": families[family], "estimator": estimator, "error": repr(exc)}
                )
            torch.cuda.empty_cache()
    unit = {"mdeq": "img/s", "lm": "tok/s"}
    print()
    print(
        "| preset | estimator | step ms | fwd ms | bwd ms | throughput | peak GiB | mean nstep | loss finite |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | {r['estimator']} | error: {r['error'][:80]} |||||||")
            continue
        print(
            f"| {r['preset']} | {r['estimator']} | {r['step_ms']:.1f} | {r['fwd_ms']:.1f} | {r['bwd_ms']:.1f} | "
            f"{r['items_per_s']:.0f} {unit[r['family']]} | {r['peak_gib']:.2f} | {r['nstep']:.1f} | {r['finite']} |"
        )
    for family in families:
        by_name = {r["estimator"]: r for r in rows if r.get("family") == family and "error" not in r}
        if "implicit" in by_name:
            for other in ("upg", "npg"):
                if other in by_name:
                    ratio = by_name["implicit"]["bwd_ms"] / by_name[other]["bwd_ms"]
                    print(f"{families[family]}: backward(implicit) / backward({other}) = {ratio:.2f}")
    return 0 if all("error" not in r and r["finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
