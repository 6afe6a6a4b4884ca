"""Hub test client A: hf_deq importable, fake Hub up (HF_ENDPOINT, HF_TOKEN set by the test).

Trains a tiny DEQ-Transformer LM and a tiny MDEQ classifier a few steps, saves them, publishes them
(``hf_deq.hub.push_model_dir`` and ``scripts/push_to_hub.py --private``), loads them back with
``from_pretrained("user/...")``, pushes with ``Trainer(push_to_hub=True)`` and ``model.push_to_hub``, and
exercises the error paths
(malformed ids, 401, 404, 500). Writes its report to argv[1] and reference tensors into argv[2].
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import time
from pathlib import Path

from _common import Report, fake_control, snapshot

TEXT = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and "
    "arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them."
)
LM_REPO, MDEQ_REPO, TRAINER_REPO = "user/deq-lm-tiny", "user/mdeq-tiny", "user/deq-lm-trainer"
METHOD_REPO = "user/deq-lm-method"


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(sorted(set(TEXT)))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )


def train(model, batches, steps: int = 3, lr: float = 3e-3) -> float:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return time.perf_counter() - start


def main(report: Report) -> None:
    work = Path(sys.argv[2])
    repo_root = Path(os.environ["HF_DEQ_REPO_ROOT"])
    t0 = time.monotonic()
    import huggingface_hub
    import torch
    from huggingface_hub import HfApi, ModelCard, hf_hub_download, metadata_load
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    import hf_deq
    from hf_deq import hub

    report["import_seconds"] = round(time.monotonic() - t0, 2)
    report["bundle_differs_from_sources_only_in_imports"] = bundle_matches_sources(hub)
    report["versions"] = {"huggingface_hub": huggingface_hub.__version__, "torch": torch.__version__}
    api = HfApi()

    # -- DEQ-Transformer LM: train, save, push with push_model_dir, load back --------------------------------------
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    ids = torch.tensor(tokenizer(TEXT)["input_ids"])
    vocab_size = len(tokenizer)
    lm = hf_deq.create_model(
        "test_deq_transformer_tiny", vocab_size=vocab_size, eos_token_id=1, pad_token_id=1
    )
    chunks = ids[: 6 * 24].view(6, 24)
    train_batches = [{"input_ids": chunks[i : i + 2], "labels": chunks[i : i + 2]} for i in (0, 2)]
    eval_batch = {"input_ids": chunks[4:6], "labels": chunks[4:6]}
    wall = train(lm, train_batches)
    with torch.no_grad():
        eval_loss = float(lm(**eval_batch).loss)
    stats = hub.measure_solver_stats(lm, [{"input_ids": eval_batch["input_ids"]}])
    lm_dir = work / "lm_model"
    lm.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    metrics = {
        "eval_loss": eval_loss,
        "eval_perplexity": float(torch.exp(torch.tensor(eval_loss))),
        "eval_num_examples": 2,
        "eval_solver_nstep": stats["solver_nstep_mean"],
        "eval_solver_nstep_max": stats["solver_nstep_max"],
        "eval_solver_residual": stats["solver_residual_mean"],
        "train_runtime": wall,
        "train_steps": 3,
        "dataset_name": "hamlet.txt",
        "dataset_config_name": None,
    }
    (lm_dir / "all_results.json").write_text(json.dumps(metrics, indent=2))
    recipe = {
        "learning_rate": 3e-3,
        "optimizer": "AdamW",
        "max_train_steps": 3,
        "per_device_train_batch_size": 2,
        "block_size": 24,
        "mixed_precision": "no",
        "seed": 0,
        "hardware": "CPU (test)",
        "hub_token": "must-not-appear-in-card",
    }
    (lm_dir / "training_args.json").write_text(json.dumps(recipe, indent=2))
    prompt = eval_batch["input_ids"][:1, :6]
    with torch.no_grad():
        lm_logits = lm(input_ids=eval_batch["input_ids"]).logits
        generated = lm.generate(prompt, max_new_tokens=4, do_sample=False)

    report.mark("lm_trained")
    before = snapshot(lm_dir)
    info = hub.push_model_dir(lm_dir, LM_REPO, commit_message="Add tiny DEQ-Transformer")
    report["lm_push_commit"] = info.oid
    report["lm_dir_unchanged"] = snapshot(lm_dir) == before

    report.mark("lm_pushed")
    loaded = AutoModelForCausalLM.from_pretrained(LM_REPO).eval()
    base = AutoModel.from_pretrained(LM_REPO).eval()
    loaded_tok = AutoTokenizer.from_pretrained(LM_REPO)
    with torch.no_grad():
        report["lm_loaded_class"] = f"{type(loaded).__module__}.{type(loaded).__name__}"
        report["lm_logits_identical"] = torch.equal(
            loaded(input_ids=eval_batch["input_ids"]).logits, lm_logits
        )
        report["lm_generate_identical"] = torch.equal(
            loaded.generate(prompt, max_new_tokens=4, do_sample=False), generated
        )
        hidden = base(input_ids=eval_batch["input_ids"]).last_hidden_state
    report["tokenizer_round_trip"] = loaded_tok(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    torch.save(
        {
            "input_ids": eval_batch["input_ids"],
            "logits": lm_logits,
            "hidden": hidden,
            "prompt": prompt,
            "generated": generated,
            "text": TEXT,
            "text_ids": tokenizer(TEXT)["input_ids"],
        },
        work / "lm_ref.pt",
    )

    report.mark("lm_loaded")
    files = api.list_repo_files(LM_REPO)
    report["lm_repo_files"] = files
    config = json.loads(Path(hf_hub_download(LM_REPO, "config.json")).read_text())
    report["lm_auto_map"] = config.get("auto_map")
    readme = hf_hub_download(LM_REPO, "README.md")
    report["lm_card_metadata"] = metadata_load(readme)
    card = ModelCard.load(LM_REPO)
    report["lm_card_text"] = card.text
    report["lm_card_eval_results"] = [
        {"metric": r.metric_type, "value": r.metric_value, "dataset": r.dataset_name}
        for r in card.data.eval_results or []
    ]
    if int(huggingface_hub.__version__.split(".")[0]) >= 2:  # 1.x's ModelCard.validate ignores HF_ENDPOINT
        card.validate()
        report["lm_card_validated_by_server"] = True

    report.mark("lm_checked")
    # -- MDEQ classifier: train, save, push with the CLI (--private), load back ------------------------------------
    import numpy as np

    torch.manual_seed(0)
    mdeq = hf_deq.create_model("test_mdeq_tiny")
    processor = hf_deq.MDEQImageProcessor.from_model_config(mdeq.config)
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (8, 8, 1), dtype=np.uint8) for _ in range(8)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    labels = torch.arange(8) % 10
    wall = train(
        mdeq,
        [
            {"pixel_values": pixels[:4], "labels": labels[:4]},
            {"pixel_values": pixels[4:], "labels": labels[4:]},
        ],
    )
    with torch.no_grad():
        out = mdeq(pixel_values=pixels, labels=labels)
    mdeq_dir = work / "mdeq_model"
    mdeq.save_pretrained(mdeq_dir)
    processor.save_pretrained(mdeq_dir)
    (mdeq_dir / "all_results.json").write_text(
        json.dumps(
            {
                "eval_accuracy": float((out.logits.argmax(-1) == labels).float().mean()),
                "eval_loss": float(out.loss),
                "eval_num_examples": 8,
                "train_runtime": wall,
                "train_steps": 3,
                "dataset_name": "digits",
                "dataset_config_name": None,
            }
        )
    )
    (mdeq_dir / "training_args.json").write_text(json.dumps({"learning_rate": 3e-3, "max_train_steps": 3}))
    torch.save({"images": images, "pixel_values": pixels, "logits": out.logits}, work / "mdeq_ref.pt")

    report.mark("mdeq_trained")
    before = snapshot(mdeq_dir)
    code = run_cli(
        repo_root, report, "cli_push", ["--model_dir", str(mdeq_dir), "--repo_id", MDEQ_REPO, "--private"]
    )
    report.mark("mdeq_pushed")
    report["mdeq_dir_unchanged"] = snapshot(mdeq_dir) == before
    report["cli_push_exit"] = code
    report["mdeq_private"] = api.model_info(MDEQ_REPO).private
    report.expect_error("mdeq_anonymous_read", lambda: HfApi(token=False).model_info(MDEQ_REPO), Exception)
    loaded_proc = AutoImageProcessor.from_pretrained(MDEQ_REPO)
    loaded_mdeq = AutoModelForImageClassification.from_pretrained(MDEQ_REPO).eval()
    with torch.no_grad():
        report["mdeq_pixels_identical"] = torch.equal(
            loaded_proc(images=images, return_tensors="pt")["pixel_values"], pixels
        )
        report["mdeq_logits_identical"] = torch.equal(loaded_mdeq(pixel_values=pixels).logits, out.logits)
    report["mdeq_repo_files"] = api.list_repo_files(MDEQ_REPO)
    report["mdeq_auto_map"] = json.loads(Path(hf_hub_download(MDEQ_REPO, "config.json")).read_text()).get(
        "auto_map"
    )
    report["mdeq_processor_auto_map"] = json.loads(
        Path(hf_hub_download(MDEQ_REPO, "preprocessor_config.json")).read_text()
    ).get("auto_map")
    mdeq_card = ModelCard.load(MDEQ_REPO)
    report["mdeq_card_metadata"] = mdeq_card.data.to_dict()
    report["mdeq_card_text"] = mdeq_card.text

    report.mark("mdeq_checked")
    # -- Trainer(push_to_hub=True) ---------------------------------------------------------------------------------
    torch.manual_seed(1)
    lm2 = hf_deq.create_model(
        "test_deq_transformer_tiny", vocab_size=vocab_size, eos_token_id=1, pad_token_id=1
    )
    dataset = [{"input_ids": chunks[i], "labels": chunks[i]} for i in range(4)]
    args = TrainingArguments(
        output_dir=str(work / "trainer_out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        push_to_hub=True,
        hub_model_id=TRAINER_REPO,
        hub_strategy="end",
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=lm2, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.push_to_hub(commit_message="Trainer push")
    lm2.eval()
    with torch.no_grad():
        expected = lm2(input_ids=eval_batch["input_ids"]).logits
        again = AutoModelForCausalLM.from_pretrained(TRAINER_REPO).eval()
        report["trainer_logits_identical"] = torch.equal(
            again(input_ids=eval_batch["input_ids"]).logits, expected
        )
    report["trainer_repo_files"] = api.list_repo_files(TRAINER_REPO)

    report.mark("trainer")
    # -- model.push_to_hub: hf_deq's card and remote code, tokenizer alongside -----------------------------------
    lm2.push_to_hub(METHOD_REPO, processing_class=tokenizer, commit_message="push_to_hub method")
    report["method_repo_files"] = api.list_repo_files(METHOD_REPO)
    method_config = json.loads(Path(hf_hub_download(METHOD_REPO, "config.json")).read_text())
    report["method_auto_map"] = method_config.get("auto_map")
    report["method_card_generated"] = (
        hub.GENERATED_MARKER in Path(hf_hub_download(METHOD_REPO, "README.md")).read_text()
    )
    with torch.no_grad():
        again = AutoModelForCausalLM.from_pretrained(METHOD_REPO).eval()
        report["method_logits_identical"] = torch.equal(
            again(input_ids=eval_batch["input_ids"]).logits, expected
        )

    report.mark("push_to_hub_method")
    # -- error paths: nothing half-written locally --------------------------------------------------------------
    before = snapshot(lm_dir)

    def hub_requests() -> int:
        return sum(1 for _, path, _ in fake_control("log") if not path.startswith("/__fake__/"))

    n_requests = hub_requests()
    for i, bad in enumerate(["not a repo id", "user/a/b", "user/bad--name", "", "user/", "-user/x"]):
        report.expect_error(f"malformed_{i}", lambda bad=bad: hub.push_model_dir(lm_dir, bad), Exception)
    report["malformed_requests_sent"] = hub_requests() - n_requests
    report.expect_error(
        "refused_401", lambda: hub.push_model_dir(lm_dir, "user/new-repo", token="wrong-token"), Exception
    )
    sha = api.model_info(LM_REPO).sha
    fake_control("fail", {"status": 404, "path": "/preupload/", "times": 1})
    report.expect_error("refused_404", lambda: hub.push_model_dir(lm_dir, LM_REPO), Exception)
    fake_control(
        "fail", {"status": 500, "path": "/commit/", "times": 1}
    )  # a new repo: there is a commit to refuse
    report.expect_error("refused_500", lambda: hub.push_model_dir(lm_dir, "user/deq-lm-500"), Exception)
    report["files_after_refused_commit"] = api.list_repo_files("user/deq-lm-500")
    fake_control("fail", {"status": 500, "path": "/api/repos/create", "times": 1})
    report.expect_error("refused_500_create", lambda: hub.push_model_dir(lm_dir, "user/other"), Exception)
    fake_control("reset")
    import socket

    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    report.expect_error("unreachable", lambda: hub.push_model_dir(lm_dir, LM_REPO, endpoint=dead), Exception)
    report["repo_unchanged_after_refusals"] = api.model_info(LM_REPO).sha == sha
    report["cli_malformed_exit"] = run_cli(
        repo_root, report, "cli_malformed", ["--model_dir", str(lm_dir), "--repo_id", "bad repo id"]
    )
    report["cli_401_exit"] = run_cli(
        repo_root, report, "cli_401", ["--model_dir", str(lm_dir), "--repo_id", "user/x", "--token", "wrong"]
    )
    report["cli_missing_dir_exit"] = run_cli(
        repo_root, report, "cli_missing_dir", ["--model_dir", str(work / "nope"), "--repo_id", "user/x"]
    )
    report.mark("errors")
    report["lm_dir_unchanged_after_errors"] = snapshot(lm_dir) == before
    report["leftover_staging"] = [p.name for p in Path(os.environ["TMPDIR"]).glob("hf_deq_*")]


def bundle_matches_sources(hub) -> dict[str, bool]:
    """The bundle is generated from the hf_deq sources: with imports removed, each file's syntax tree equals its
    source module's."""
    import ast
    import importlib.util

    class DropImports(ast.NodeTransformer):
        def visit_ImportFrom(self, node):
            return None

    def skeleton(text: str) -> str:
        return ast.dump(DropImports().visit(ast.parse(text)))

    result = {}
    for family, processors in (("deq_transformer", []), ("mdeq", ["MDEQImageProcessor"])):
        bundle = hub.build_remote_code_bundle(family, processors)
        for name, text in bundle.files.items():
            source = Path(importlib.util.find_spec(bundle.sources[name]).origin).read_text(encoding="utf-8")
            result[f"{family}/{name}"] = skeleton(text) == skeleton(source)
    return result


def run_cli(repo_root: Path, report: Report, name: str, argv: list[str]) -> int:
    """``scripts/push_to_hub.py`` in this process (its ``__main__`` path, with sys.argv), stderr captured."""
    stderr, stdout = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = ["push_to_hub.py", *argv]
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            runpy.run_path(str(repo_root / "scripts" / "push_to_hub.py"), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old_argv
    report[f"{name}_stderr"] = stderr.getvalue()
    report[f"{name}_stdout"] = stdout.getvalue()
    return code


if __name__ == "__main__":
    sys.exit(Report(sys.argv[1]).run(main))
