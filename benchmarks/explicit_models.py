"""The explicit models a user would pick instead of a DEQ, for ``scripts/benchmark_training.py``.

- ``explicit_gpt2``: a small transformers ``GPT2LMHeadModel`` (4 layers, width 128, 4 heads, no dropout) sized to
  a tokenizer and a block size: the explicit counterpart of ``deq-transformer-char``.
- ``ExplicitCNNForImageClassification``: a small ResNet-style CNN classifier (a stem convolution, residual blocks
  of two 3x3 convolutions with BatchNorm, a stride-2 stage, global average pooling, a linear head) as a
  ``PreTrainedModel`` returning ``ImageClassifierOutput`` (``.loss`` / ``.logits``): the explicit counterpart of
  ``mdeq-tiny-digits``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

#: the explicit GPT of the benchmark: layers, width, heads
GPT_LAYERS, GPT_WIDTH, GPT_HEADS = 4, 128, 4


def explicit_gpt2(
    tokenizer, block_size: int, n_layer: int = GPT_LAYERS, n_embd: int = GPT_WIDTH, n_head: int = GPT_HEADS
):
    """A ``GPT2LMHeadModel`` for ``tokenizer``'s vocabulary and ``block_size`` positions, without dropout
    (tied input/output embeddings, as GPT-2 has them)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


class ExplicitCNNConfig(PretrainedConfig):
    """Config of ``ExplicitCNNForImageClassification``.

    Args:
        num_channels: input image channels.
        image_size: input height and width.
        widths: channels of each stage; every stage after the first halves the resolution.
        blocks_per_stage: residual blocks in each stage.
        num_labels: classes (or give ``id2label``).
    """

    model_type = "explicit_cnn"

    def __init__(
        self,
        num_channels: int = 1,
        image_size: int = 8,
        widths: list[int] | tuple[int, ...] = (32, 64),
        blocks_per_stage: int = 2,
        **kwargs,
    ) -> None:
        self.num_channels = num_channels
        self.image_size = image_size
        self.widths = list(widths)
        self.blocks_per_stage = blocks_per_stage
        super().__init__(**kwargs)


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))``; with ``stride`` 2 or a change of width, a 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


class ExplicitCNNForImageClassification(PreTrainedModel):
    """A small ResNet-style classifier (see the module docstring); ``labels`` give ``loss``."""

    config_class = ExplicitCNNConfig
    main_input_name = "pixel_values"
    base_model_prefix = "cnn"

    def __init__(self, config: ExplicitCNNConfig) -> None:
        super().__init__(config)
        widths = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(config.num_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        features = self.blocks(self.stem(pixel_values)).mean(dim=(2, 3))
        logits = self.classifier(features)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "GPT_HEADS",
    "GPT_LAYERS",
    "GPT_WIDTH",
    "ExplicitCNNConfig",
    "ExplicitCNNForImageClassification",
    "ResidualBlock",
    "explicit_gpt2",
]
