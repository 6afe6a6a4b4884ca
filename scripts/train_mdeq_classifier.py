#!/usr/bin/env python
"""Train an MDEQ image classifier with the shared Accelerate loop (``hf_deq.training``).

Single process (CPU or one GPU)::

    python scripts/train_mdeq_classifier.py --output_dir outputs/mdeq-digits

Distributed / mixed precision (from the accelerate config, or ``--mixed_precision``)::

    accelerate launch scripts/train_mdeq_classifier.py --dataset_name uoft-cs/cifar10 \\
        --preset mdeq-tiny-cifar10 --augment crop_flip --output_dir outputs/mdeq-tiny-cifar10
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/train_mdeq_classifier.py ...

Data: ``--dataset_name digits`` (default; scikit-learn's bundled 8x8 digits as an HF ``Dataset``, split 80/20 with
a fixed seed, nothing downloaded), any HF image dataset (``--dataset_name uoft-cs/cifar10``: image and label
columns are detected from the features, the evaluation split is ``validation``, else ``test``, else a
``--train_val_split`` part of ``train``), or local image folders (``--train_dir`` / ``--validation_dir``, the
``imagefolder`` layout ``<dir>/<label>/<image>``).

Model: a preset (``--preset``, see ``hf_deq.list_variants("mdeq")``) or a saved model (``--model_name_or_path``);
every solver and gradient-estimator field of the config has a flag (``--grad_estimator implicit``, ...). A recipe
is a JSON file of flags (``--config scripts/configs/mdeq-tiny-cifar10-upg.json``). The final model is saved in
``--output_dir`` (safetensors) with its image processor, next to ``all_results.json`` and ``history.json``.
"""

from hf_deq.tasks import training_script
from hf_deq.training.hooks import HubPushHook

TASK, parse_args, main = training_script("image-classification", __file__, __doc__, hooks=[HubPushHook()])

if __name__ == "__main__":
    main()
