"""Hub test client B: hf_deq can NOT be imported here; the fake Hub is up.

Loads the repos client A published with ``trust_remote_code=True`` only (``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM``, ``AutoModelForImageClassification``, ``AutoImageProcessor``) and compares the outputs
with A's reference tensors. Report to argv[1]; A's work folder in argv[2].
"""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path

from _common import Report

LM_REPO, MDEQ_REPO = "user/deq-lm-tiny", "user/mdeq-tiny"


class HideHfDeq(importlib.abc.MetaPathFinder):
    """Makes ``import hf_deq`` fail as if it were not installed (an editable install is a meta-path finder, so
    hiding a sys.path entry is not enough)."""

    def find_spec(self, name, path=None, target=None):
        if name == "hf_deq" or name.startswith("hf_deq."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def main(report: Report) -> None:
    sys.meta_path.insert(0, HideHfDeq())
    sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "hf_deq" / "__init__.py").is_file()]
    try:
        import hf_deq  # noqa: F401

        report["hf_deq_importable"] = True
    except ModuleNotFoundError as err:
        report["hf_deq_importable"] = False
        report["hf_deq_import_error"] = str(err)

    work = Path(sys.argv[2])
    import torch
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoTokenizer,
    )

    lm_ref = torch.load(work / "lm_ref.pt", weights_only=False)
    config = AutoConfig.from_pretrained(LM_REPO, trust_remote_code=True)
    report["lm_config_class"] = f"{type(config).__module__}.{type(config).__name__}"
    lm = AutoModelForCausalLM.from_pretrained(LM_REPO, trust_remote_code=True).eval()
    report["lm_model_class"] = f"{type(lm).__module__}.{type(lm).__name__}"
    base = AutoModel.from_pretrained(LM_REPO, trust_remote_code=True).eval()
    report["lm_base_class"] = f"{type(base).__module__}.{type(base).__name__}"
    tokenizer = AutoTokenizer.from_pretrained(LM_REPO)
    with torch.no_grad():
        report["lm_logits_identical"] = torch.equal(
            lm(input_ids=lm_ref["input_ids"]).logits, lm_ref["logits"]
        )
        report["lm_hidden_identical"] = torch.equal(
            base(input_ids=lm_ref["input_ids"]).last_hidden_state, lm_ref["hidden"]
        )
        generated = lm.generate(lm_ref["prompt"], max_new_tokens=4, do_sample=False)
        report["lm_generate_identical"] = torch.equal(generated, lm_ref["generated"])
        out = lm(input_ids=lm_ref["input_ids"])
        report["lm_solver_stats_present"] = out.solver_nstep is not None and out.solver_residual is not None
    report["tokenizer_ids_identical"] = tokenizer(lm_ref["text"])["input_ids"] == lm_ref["text_ids"]
    report.expect_error("lm_without_trust", lambda: AutoModelForCausalLM.from_pretrained(LM_REPO), Exception)

    mdeq_ref = torch.load(work / "mdeq_ref.pt", weights_only=False)
    model = AutoModelForImageClassification.from_pretrained(MDEQ_REPO, trust_remote_code=True).eval()
    report["mdeq_model_class"] = f"{type(model).__module__}.{type(model).__name__}"
    backbone = AutoModel.from_pretrained(MDEQ_REPO, trust_remote_code=True).eval()
    report["mdeq_base_class"] = f"{type(backbone).__module__}.{type(backbone).__name__}"
    with torch.no_grad():
        report["mdeq_logits_identical"] = torch.equal(
            model(pixel_values=mdeq_ref["pixel_values"]).logits, mdeq_ref["logits"]
        )
        report["mdeq_base_runs"] = (
            backbone(pixel_values=mdeq_ref["pixel_values"]).last_hidden_state is not None
        )
    processor = AutoImageProcessor.from_pretrained(MDEQ_REPO, trust_remote_code=True)
    report["mdeq_processor_class"] = f"{type(processor).__module__}.{type(processor).__name__}"
    pixels = processor(images=mdeq_ref["images"], return_tensors="pt")["pixel_values"]
    report["mdeq_pixels_identical"] = torch.equal(pixels, mdeq_ref["pixel_values"])
    report["hf_deq_in_sys_modules"] = sorted(
        m for m in sys.modules if m == "hf_deq" or m.startswith("hf_deq.")
    )


if __name__ == "__main__":
    sys.exit(Report(sys.argv[1]).run(main))
