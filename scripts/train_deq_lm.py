#!/usr/bin/env python
"""Train a DEQ-Transformer causal language model with the shared Accelerate loop (``hf_deq.training``).

    # built-in corpus (Python's pydoc topics, no download), char tokenizer, the CPU demo preset
    python scripts/train_deq_lm.py --output_dir /tmp/deq-lm --max_train_steps 200

    # character-level tinyshakespeare: first 90% train, last 10% validation
    python scripts/train_deq_lm.py --train_file input.txt --train_tokenizer char --preset deq-transformer-char \\
        --block_size 64 --per_device_train_batch_size 16 --max_train_steps 2000 --output_dir /tmp/shakespeare

    # WikiText-103 at the paper's scale (word tokenizer, adaptive embeddings; the recipe is a JSON of flags)
    accelerate launch scripts/train_deq_lm.py --config scripts/configs/deq-transformer-wt103-upg.json \\
        --with_tracking --output_dir runs/wt103

    # a smaller WikiText-103 model with a BPE tokenizer
    accelerate launch scripts/train_deq_lm.py --dataset_name Salesforce/wikitext \\
        --dataset_config_name wikitext-103-v1 --train_tokenizer bpe --preset deq-transformer-small \\
        --block_size 256 --mixed_precision bf16 --with_tracking --output_dir runs/wt103-small

Every solver and gradient-estimator field of the config is a flag (``--grad_estimator implicit``,
``--solver broyden``, ...). ``--unrolled_warmup_steps N`` trains the first N steps with the ``unrolled``
estimator (plain backprop through ``grad_steps`` explicit iterations), then switches to the configured one.
Checkpoints (``--checkpointing_steps``) hold the model, optimizer, scheduler, RNG and tokenizer;
``--resume_from_checkpoint {path,latest}`` continues exactly where the run stopped. At the end the model and the
tokenizer are saved to ``--output_dir`` (``AutoModelForCausalLM`` / ``AutoTokenizer`` reload them) with
``all_results.json``.
"""

from hf_deq.tasks import training_script
from hf_deq.training.hooks import HubPushHook

TASK, parse_args, main = training_script("causal-lm", __file__, __doc__, hooks=[HubPushHook()])

if __name__ == "__main__":
    main()
