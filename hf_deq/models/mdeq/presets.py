"""MDEQ presets: ``hf_deq.create_model("mdeq-tiny-cifar10")``.

Architectures follow the official configs of the MDEQ paper and of the phantom-gradient paper (arXiv 2111.05177,
github.com/Gsunshine/phantom_grad); their training recipes (estimator, solver budget): docs/design.md,
"Training recipes". Parameter counts (``MDEQForImageClassification``, weight-norm ``g`` included):

========================  ==========  ============================
preset                    parameters  paper
========================  ==========  ============================
``mdeq-tiny-cifar10``     158,986     ~170K
``mdeq-large-cifar10``    11,098,398  ~10M
``mdeq-small-imagenet``   16,808,936  ~18M
``mdeq-tiny-digits``      158,554     (8x8 grayscale, this repo)
========================  ==========  ============================
"""

from __future__ import annotations

from ...variants import Variant, register_variant
from .configuration_mdeq import MDEQConfig
from .modeling_mdeq import MDEQForImageClassification

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _labels(names: list[str]) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


#: UPG(k=5, lambda=0.5) with Broyden: the phantom-gradient recipe for MDEQ (docs/design.md, "Training
#: recipes").
_PHANTOM = {"grad_estimator": "upg", "grad_steps": 5, "grad_damping": 0.5, "solver": "broyden"}

_TINY = {
    "channels": [24, 24],
    "num_blocks": 1,
    "expansion_factor": 5,
    "num_groups": 8,
    "head_channels": [8, 16],
    "final_channels": 200,
    "weight_norm": True,
    "dropout": 0.0,
}

_LARGE = {
    "channels": [32, 64, 128, 256],
    "num_blocks": 1,
    "expansion_factor": 5,
    "num_groups": 8,
    "head_channels": [14, 28, 56, 112],
    "final_channels": 1680,
    "weight_norm": True,
    "dropout": 0.0,
}

_PRESETS: list[tuple[str, dict, str, tuple[str, ...]]] = [
    (
        "mdeq-tiny-cifar10",
        {
            **_TINY,
            **_PHANTOM,
            "num_channels": 3,
            "image_size": 32,
            "downsample_times": 0,
            "solver_max_iter": 22,
            **_labels(CIFAR10_LABELS),
        },
        "MDEQ-Tiny on CIFAR-10: 2 branches x 24 channels, ~159K parameters; UPG(5, 0.5), Broyden 22 (paper ~86%).",
        ("cifar10",),
    ),
    (
        "mdeq-large-cifar10",
        {
            **_LARGE,
            **_PHANTOM,
            "num_channels": 3,
            "image_size": 32,
            "downsample_times": 0,
            "solver_max_iter": 18,
            **_labels(CIFAR10_LABELS),
        },
        "MDEQ-Large on CIFAR-10: branches [32, 64, 128, 256], ~11M parameters; UPG(5, 0.5), Broyden 18 "
        "(paper 95.0%; SGD 0.1 cosine, 220 epochs).",
        ("cifar10",),
    ),
    (
        "mdeq-small-imagenet",
        {
            "channels": [32, 64, 128, 256],
            "num_blocks": 1,
            "expansion_factor": 5,
            "num_groups": 8,
            "head_channels": [24, 48, 96, 192],
            "final_channels": 2048,
            "weight_norm": True,
            "dropout": 0.0,
            **_PHANTOM,
            "grad_damping": 0.6,
            "num_channels": 3,
            "image_size": 224,
            "downsample_times": 2,
            "solver_max_iter": 26,
            "num_labels": 1000,
        },
        "MDEQ-Small on ImageNet: branches [32, 64, 128, 256], stem downsampling x4, ~17M parameters; "
        "UPG(5, 0.6), Broyden 26 (paper 75.7%; SGD Nesterov 0.05, 100 epochs).",
        ("imagenet",),
    ),
    (
        "mdeq-tiny-digits",
        {
            **_TINY,
            **_PHANTOM,
            "num_channels": 1,
            "image_size": 8,
            "downsample_times": 0,
            "solver_max_iter": 8,
            "solver_eval_max_iter": 16,
            **_labels([str(d) for d in range(10)]),
        },
        "MDEQ-Tiny on scikit-learn's 8x8 digits (branches at 8x8 and 4x4): the README's main job.",
        ("digits",),
    ),
    # Tiny presets for tests: seconds on a CPU.
    (
        "test_mdeq_tiny",
        {
            "channels": [8, 16],
            "num_blocks": 1,
            "expansion_factor": 2,
            "num_groups": 4,
            "head_channels": [4, 8],
            "final_channels": 16,
            "weight_norm": True,
            "num_channels": 1,
            "image_size": 8,
            "solver": "anderson",
            "solver_max_iter": 8,
            "num_labels": 10,
        },
        "Tiny MDEQ for tests (2 branches, 8x8 grayscale).",
        ("test",),
    ),
    (
        "test_mdeq_tiny_3branch",
        {
            "channels": [4, 8, 8],
            "num_blocks": [1, 2, 1],
            "expansion_factor": 2,
            "num_groups": 2,
            "head_channels": [2, 4, 4],
            "final_channels": 8,
            "weight_norm": False,
            "dropout": 0.1,
            "num_channels": 3,
            "image_size": 16,
            "downsample_times": 1,
            "solver": "anderson",
            "solver_max_iter": 6,
            "num_labels": 3,
        },
        "Tiny 3-branch RGB MDEQ with stem downsampling and dropout, for tests.",
        ("test",),
    ),
]

for _name, _kwargs, _description, _tags in _PRESETS:
    register_variant(
        Variant(
            name=_name,
            config_class=MDEQConfig,
            config_kwargs=_kwargs,
            model_class=MDEQForImageClassification,
            description=_description,
            tags=("mdeq", *_tags),
        )
    )

__all__: list[str] = []
