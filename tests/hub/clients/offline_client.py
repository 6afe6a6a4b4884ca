"""Hub test client C: the fake Hub has stopped and HF_HUB_OFFLINE=1; the HF cache of clients A and B is kept.

Loads the published repos again, from the cache only: the MDEQ classifier through its cached remote code (with
hf_deq hidden), then the LM through ``import hf_deq`` (no remote code). Report to argv[1]; A's work folder in argv[2].
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from _common import Report
from remote_code_client import HideHfDeq

LM_REPO, MDEQ_REPO = "user/deq-lm-tiny", "user/mdeq-tiny"


def main(report: Report) -> None:
    work = Path(sys.argv[2])
    try:
        urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/api/whoami-v2", timeout=2)
        report["server_reachable"] = True
    except OSError:
        report["server_reachable"] = False
    import huggingface_hub.constants
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoTokenizer,
    )

    report["offline_mode"] = bool(huggingface_hub.constants.HF_HUB_OFFLINE)
    # the remote code first, while hf_deq is hidden (with hf_deq imported, transformers prefers its registered
    # classes over a repo's auto_map)
    hider = HideHfDeq()
    sys.meta_path.insert(0, hider)
    mdeq_ref = torch.load(work / "mdeq_ref.pt", weights_only=False)
    processor = AutoImageProcessor.from_pretrained(MDEQ_REPO, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(MDEQ_REPO, trust_remote_code=True).eval()
    report["mdeq_model_class"] = f"{type(model).__module__}.{type(model).__name__}"
    with torch.no_grad():
        pixels = processor(images=mdeq_ref["images"], return_tensors="pt")["pixel_values"]
        report["mdeq_logits_identical"] = torch.equal(model(pixel_values=pixels).logits, mdeq_ref["logits"])
    sys.meta_path.remove(hider)

    import hf_deq  # noqa: F401

    lm_ref = torch.load(work / "lm_ref.pt", weights_only=False)
    lm = AutoModelForCausalLM.from_pretrained(LM_REPO).eval()
    report["lm_model_class"] = f"{type(lm).__module__}.{type(lm).__name__}"
    AutoTokenizer.from_pretrained(LM_REPO)
    with torch.no_grad():
        report["lm_logits_identical"] = torch.equal(
            lm(input_ids=lm_ref["input_ids"]).logits, lm_ref["logits"]
        )


if __name__ == "__main__":
    sys.exit(Report(sys.argv[1]).run(main))
