"""Configuration of the multiscale deep equilibrium model (MDEQ; Bai, Koltun, Kolter, NeurIPS 2020)."""

from __future__ import annotations

from ...configuration_deq import DEQConfig, _is_finite_number, _is_int

DOWNSAMPLE_CHOICES = (0, 1, 2)


class MDEQConfig(DEQConfig):
    """Config of ``MDEQModel`` / ``MDEQForImageClassification``: the shared DEQ fields (solver, gradient
    estimator; see ``DEQConfig``) plus the architecture below.

    Args:
        num_channels: channels of the input images (3 for RGB, 1 for grayscale).
        image_size: side of the square images the image processor resizes to (the model itself accepts any
            size at least ``min_image_size``).
        channels: channels of each resolution branch, highest resolution first; ``len(channels)`` is the number
            of branches, branch ``i`` works at ``1 / 2**i`` of the stem's resolution.
        num_blocks: residual blocks per branch (an int for every branch, or one int per branch).
        expansion_factor: the inner width of a residual block is ``expansion_factor * channels[i]``.
        num_groups: GroupNorm groups inside the equilibrium cell (must divide every normalised width).
        dropout: variational (channel) dropout in the residual blocks; one mask per forward, shared by every
            solver iteration.
        weight_norm: weight normalisation on the convolutions of the equilibrium cell.
        downsample_times: stride-2 convolutions in the stem (0, 1 or 2: the highest branch works at full,
            1/2 or 1/4 resolution).
        head_channels: bottleneck width of the classification head at each resolution (its output is
            ``4 * head_channels[i]`` channels).
        final_channels: channels of the head's last 1x1 convolution, before global average pooling.
        num_labels: number of classes (or ``id2label`` / ``label2id``).
    """

    model_type = "mdeq"

    num_channels: int = 3
    image_size: int = 32
    channels: list[int] | tuple[int, ...] = (24, 24)
    num_blocks: int | list[int] | tuple[int, ...] = 1
    expansion_factor: float = 5
    num_groups: int = 8
    dropout: float = 0.0
    weight_norm: bool = True
    downsample_times: int = 0
    head_channels: list[int] | tuple[int, ...] = (8, 16)
    final_channels: int = 200
    solver: str = "broyden"
    solver_max_iter: int = 22

    #: output width of a head bottleneck relative to its ``head_channels`` (ResNet bottleneck)
    head_expansion = 4

    def __post_init__(self, **kwargs):
        if isinstance(self.channels, tuple):
            self.channels = list(self.channels)
        if isinstance(self.head_channels, tuple):
            self.head_channels = list(self.head_channels)
        if isinstance(self.num_blocks, tuple):
            self.num_blocks = list(self.num_blocks)
        super().__post_init__(**kwargs)
        self.validate_mdeq_fields()

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def num_branches(self) -> int:
        return len(self.channels)

    @property
    def blocks_per_branch(self) -> list[int]:
        if _is_int(self.num_blocks):
            return [self.num_blocks] * self.num_branches
        return list(self.num_blocks)

    @property
    def min_image_size(self) -> int:
        """Smallest image side for which every branch has its own resolution (>= 1 pixel)."""
        return 2 ** (self.downsample_times + self.num_branches - 1)

    def inner_channels(self, branch: int) -> int:
        return int(self.expansion_factor * self.channels[branch])

    # -- validation -----------------------------------------------------------------------------------------
    def validate_mdeq_fields(self) -> None:
        """Raise ``DEQConfigError`` (a ``ValueError``) naming the first invalid architecture field."""
        if not _is_int(self.num_channels) or self.num_channels < 1:
            raise self._error("num_channels", "an integer >= 1 (3 for RGB, 1 for grayscale)")
        channels = self.channels
        if not isinstance(channels, list) or not channels or not all(_is_int(c) and c >= 1 for c in channels):
            raise self._error("channels", "a non-empty list of integers >= 1, one per resolution branch")
        n = len(channels)
        blocks = self.num_blocks
        if _is_int(blocks):
            if blocks < 1:
                raise self._error("num_blocks", "an integer >= 1 or a list of them, one per branch")
        elif not (
            isinstance(blocks, list) and len(blocks) == n and all(_is_int(b) and b >= 1 for b in blocks)
        ):
            raise self._error("num_blocks", f"an integer >= 1 or a list of {n} of them (one per branch)")
        if not _is_finite_number(self.expansion_factor) or min(self.inner_channels(i) for i in range(n)) < 1:
            raise self._error("expansion_factor", "a finite number > 0 with expansion_factor * channels >= 1")
        if not _is_int(self.num_groups) or self.num_groups < 1:
            raise self._error("num_groups", "an integer >= 1")
        widths = {*channels, *(self.inner_channels(i) for i in range(n))}
        bad = sorted(w for w in widths if w < 1 or w % self.num_groups)
        if bad:
            raise self._error(
                "num_groups",
                f"a divisor of every GroupNorm width (channels {channels} and their expansion x"
                f"{self.expansion_factor}: {sorted(widths)}); it does not divide {bad}",
            )
        if not _is_finite_number(self.dropout) or not 0 <= self.dropout < 1:
            raise self._error("dropout", "a number in [0, 1)")
        if not isinstance(self.weight_norm, bool):
            raise self._error("weight_norm", "True or False")
        if not _is_int(self.downsample_times) or self.downsample_times not in DOWNSAMPLE_CHOICES:
            raise self._error("downsample_times", f"one of {list(DOWNSAMPLE_CHOICES)}")
        head = self.head_channels
        if not (isinstance(head, list) and len(head) == n and all(_is_int(h) and h >= 1 for h in head)):
            raise self._error("head_channels", f"a list of {n} integers >= 1 (one per branch)")
        if not _is_int(self.final_channels) or self.final_channels < 1:
            raise self._error("final_channels", "an integer >= 1")
        if not _is_int(self.image_size) or self.image_size < self.min_image_size:
            raise self._error(
                "image_size",
                f"an integer >= {self.min_image_size} (2**(downsample_times + num_branches - 1) for "
                f"downsample_times={self.downsample_times} and {n} branches)",
            )
        if self.num_labels < 1:
            raise self._error("num_labels", "an integer >= 1 (the number of classes)")


__all__ = ["MDEQConfig"]
