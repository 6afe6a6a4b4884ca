"""PyTorch multiscale deep equilibrium model (MDEQ; Bai, Koltun, Kolter, "Multiscale Deep Equilibrium Models",
NeurIPS 2020), trained with the gradient estimator of its config (phantom gradients: Geng et al., arXiv 2111.05177).

The equilibrium cell ``F`` maps the multiscale state ``[z_1, ..., z_n]`` (highest resolution first) to
``[F_1, ..., F_n]``: a residual block per branch (the image injection enters the highest-resolution branch only),
then multiscale fusion. The state is packed into one ``(B, D)`` tensor for the solver and started at zeros.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init

from ...deq import DEQFixedPoint, StateSpec, VariationalDropout, apply_weight_norm, pack_state, unpack_state
from ...deq_fields import deq_values, engine_kwargs
from ...modeling_deq import DEQModelMixin, accepts_solver_budget
from ...modeling_outputs import DEQImageClassifierOutput, DEQModelOutput
from ...modeling_utils import accumulation_share, add_jacobian_loss, init_weight_norm_
from .configuration_mdeq import MDEQConfig


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


def _conv1x1(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def branch_resolutions(config: MDEQConfig, height: int, width: int) -> list[tuple[int, int]]:
    """Spatial size of every branch for an input image of ``height x width`` (stride-2 convs round up)."""
    for _ in range(config.downsample_times):
        height, width = (height + 1) // 2, (width + 1) // 2
    sizes = [(height, width)]
    for _ in range(1, config.num_branches):
        height, width = (height + 1) // 2, (width + 1) // 2
        sizes.append((height, width))
    return sizes


# -- the equilibrium cell F ----------------------------------------------------------------------------------
class MDEQResidualBlock(nn.Module):
    """conv3x3 -> GroupNorm -> ReLU -> conv3x3 -> variational dropout (+ injection) -> GroupNorm (+ residual)
    -> ReLU -> GroupNorm (MDEQ paper, fig. 2 / official ``BasicBlock``)."""

    def __init__(self, config: MDEQConfig, branch: int) -> None:
        super().__init__()
        channels, inner, groups = config.channels[branch], config.inner_channels(branch), config.num_groups
        self.conv1 = _conv3x3(channels, inner)
        self.norm1 = nn.GroupNorm(groups, inner)
        self.conv2 = _conv3x3(inner, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.norm3 = nn.GroupNorm(groups, channels)
        self.dropout = VariationalDropout(config.dropout, broadcast_dims=(2, 3))
        self.act = nn.ReLU()

    def forward(self, hidden: Tensor, injection: Tensor | None = None) -> Tensor:
        residual = hidden
        out = self.act(self.norm1(self.conv1(hidden)))
        out = self.dropout(self.conv2(out))
        if injection is not None:
            out = out + injection
        out = self.norm2(out) + residual
        return self.norm3(self.act(out))


class MDEQBranch(nn.Module):
    """``num_blocks`` residual blocks at one resolution; the injection enters the first block."""

    def __init__(self, config: MDEQConfig, branch: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MDEQResidualBlock(config, branch) for _ in range(config.blocks_per_branch[branch])
        )

    def forward(self, hidden: Tensor, injection: Tensor | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            hidden = block(hidden, injection if i == 0 else None)
        return hidden


class MDEQDownsample(nn.Module):
    """From branch ``source`` to the lower-resolution branch ``target``: ``target - source`` strided 3x3
    convolutions, each followed by GroupNorm (and ReLU between them)."""

    def __init__(self, config: MDEQConfig, source: int, target: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        steps = target - source
        for k in range(steps):
            last = k == steps - 1
            out_channels = config.channels[target] if last else config.channels[source]
            layers += [
                _conv3x3(config.channels[source], out_channels, stride=2),
                nn.GroupNorm(config.num_groups, out_channels),
            ]
            if not last:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, hidden: Tensor, size: tuple[int, int]) -> Tensor:
        return self.layers(hidden)


class MDEQUpsample(nn.Module):
    """From branch ``source`` to the higher-resolution branch ``target``: 1x1 convolution, GroupNorm, nearest
    upsampling to the target's size."""

    def __init__(self, config: MDEQConfig, source: int, target: int) -> None:
        super().__init__()
        self.conv = _conv1x1(config.channels[source], config.channels[target])
        self.norm = nn.GroupNorm(config.num_groups, config.channels[target])

    def forward(self, hidden: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.norm(self.conv(hidden)), size=size, mode="nearest")


class MDEQFusion(nn.Module):
    """Multiscale fusion: every branch receives the sum of all branches brought to its resolution, then
    ReLU -> 1x1 conv -> GroupNorm (``num_groups // 2`` groups, as in the official code)."""

    def __init__(self, config: MDEQConfig) -> None:
        super().__init__()
        n = config.num_branches
        self.transforms = nn.ModuleList(
            nn.ModuleList(
                nn.Identity()
                if source == target
                else (MDEQDownsample if source < target else MDEQUpsample)(config, source, target)
                for source in range(n)
            )
            for target in range(n)
        )
        self.post = nn.ModuleList(
            nn.Sequential(nn.ReLU(), _conv1x1(c, c), nn.GroupNorm(max(config.num_groups // 2, 1), c))
            for c in config.channels
        )

    def forward(self, states: list[Tensor]) -> list[Tensor]:
        if len(states) == 1:
            return [self.post[0](states[0])]
        fused = []
        for target, row in enumerate(self.transforms):
            size = tuple(states[target].shape[-2:])
            total = states[target]
            for source, transform in enumerate(row):
                if source != target:
                    total = total + transform(states[source], size)
            fused.append(self.post[target](total))
        return fused


class MDEQCell(nn.Module):
    """The map ``F(z, x)`` whose fixed point MDEQ computes: per-branch residual blocks (injection at the highest
    resolution only), then multiscale fusion."""

    def __init__(self, config: MDEQConfig) -> None:
        super().__init__()
        self.branches = nn.ModuleList(MDEQBranch(config, i) for i in range(config.num_branches))
        self.fusion = MDEQFusion(config)
        if config.weight_norm:  # on the residual blocks' and the post-fusion convolutions (official code)
            for branch in self.branches:
                apply_weight_norm(branch)
            for post in self.fusion.post:
                apply_weight_norm(post)

    def forward(self, states: list[Tensor], injection: Tensor) -> list[Tensor]:
        outs = [
            branch(s, injection if i == 0 else None)
            for i, (branch, s) in enumerate(zip(self.branches, states))
        ]
        return self.fusion(outs)


# -- outside the equilibrium: stem and head -----------------------------------------------------------------
class MDEQStem(nn.Module):
    """Two 3x3 conv -> BatchNorm -> ReLU layers (the first ``downsample_times`` of them with stride 2), then for
    the larger models a 1x1 conv -> BatchNorm -> ReLU projection. Its output is the injection into the
    highest-resolution branch."""

    def __init__(self, config: MDEQConfig) -> None:
        super().__init__()
        width = config.channels[0]
        self.conv1 = _conv3x3(config.num_channels, width, stride=2 if config.downsample_times >= 1 else 1)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride=2 if config.downsample_times >= 2 else 1)
        self.norm2 = nn.BatchNorm2d(width)
        self.act = nn.ReLU()

        # Official code: a 1x1 projection of the stem output is the injection, except for the small
        # (no downsampling, <= 2 branches) models, where the stem output is injected directly.
        self.projection = (
            nn.Sequential(_conv1x1(width, width), nn.BatchNorm2d(width), nn.ReLU())
            if config.downsample_times > 0 or config.num_branches > 2
            else None
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        hidden = self.act(self.norm1(self.conv1(pixel_values)))
        hidden = self.act(self.norm2(self.conv2(hidden)))
        return self.projection(hidden) if self.projection is not None else hidden


class MDEQBottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1 to ``expansion * planes``, BatchNorm without affine parameters as
    in the official code, projection shortcut)."""

    def __init__(self, in_channels: int, planes: int, expansion: int) -> None:
        super().__init__()
        out_channels = planes * expansion
        self.conv1 = _conv1x1(in_channels, planes)
        self.norm1 = nn.BatchNorm2d(planes, affine=False)
        self.conv2 = _conv3x3(planes, planes)
        self.norm2 = nn.BatchNorm2d(planes, affine=False)
        self.conv3 = _conv1x1(planes, out_channels)
        self.norm3 = nn.BatchNorm2d(out_channels, affine=False)
        self.shortcut = (
            nn.Sequential(_conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))
            if in_channels != out_channels
            else nn.Identity()
        )
        self.act = nn.ReLU()

    def forward(self, hidden: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(hidden)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.act(out + self.shortcut(hidden))


class MDEQPooler(nn.Module):
    """The classification head's feature pathway (MDEQ paper / HRNet): a bottleneck per resolution, then from
    the highest resolution down, strided 3x3 conv and sum with the next branch, a 1x1 conv to ``final_channels``
    and global average pooling. Returns ``(B, final_channels)``."""

    def __init__(self, config: MDEQConfig) -> None:
        super().__init__()
        expansion = config.head_expansion
        head = config.head_channels
        self.bottlenecks = nn.ModuleList(
            MDEQBottleneck(c, h, expansion) for c, h in zip(config.channels, head)
        )
        self.downsamples = nn.ModuleList(
            nn.Sequential(
                _conv3x3(head[i] * expansion, head[i + 1] * expansion, stride=2, bias=True),
                nn.BatchNorm2d(head[i + 1] * expansion),
                nn.ReLU(),
            )
            for i in range(config.num_branches - 1)
        )
        self.final = nn.Sequential(
            _conv1x1(head[-1] * expansion, config.final_channels, bias=True),
            nn.BatchNorm2d(config.final_channels),
            nn.ReLU(),
        )

    def forward(self, states: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        hidden = self.bottlenecks[0](states[0])
        for i, down in enumerate(self.downsamples):
            hidden = self.bottlenecks[i + 1](states[i + 1]) + down(hidden)
        return self.final(hidden).mean(dim=(2, 3))


def _check_labels(labels: Tensor, logits: Tensor, problem_type: str) -> None:
    """A clear ``ValueError`` for labels that do not fit the logits (instead of an error, or a silent broadcast,
    inside torch's loss functions)."""
    batch, num_labels = logits.shape
    if problem_type == "single_label_classification":
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices (torch.long), got dtype {labels.dtype}")
        if labels.numel() != batch:
            raise ValueError(
                f"labels must hold one class index per image, shape ({batch},), got {tuple(labels.shape)}"
            )
        return
    expected = (batch,) if problem_type == "regression" else (batch, num_labels)
    if labels.numel() != math.prod(expected):
        raise ValueError(f"labels of {problem_type} must have shape {expected}, got {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise ValueError("labels contain NaN or infinite values")


# -- transformers classes ------------------------------------------------------------------------------------
class MDEQPreTrainedModel(DEQModelMixin, PreTrainedModel):
    """Weight initialisation and the capability attributes shared by the MDEQ models."""

    config: MDEQConfig
    config_class = MDEQConfig
    base_model_prefix = "mdeq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False  # the solver runs without a graph; nothing to checkpoint
    _no_split_modules = ["MDEQCell", "MDEQStem", "MDEQPooler"]
    _supports_sdpa = False
    _supports_flash_attn = False

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init_weight_norm_(module, partial(init.kaiming_normal_, mode="fan_out", nonlinearity="relu"))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=0.01)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    def _check_pixel_values(self, pixel_values: Tensor | None) -> None:
        config = self.config
        if pixel_values is None:
            raise ValueError("MDEQ needs pixel_values of shape (batch, num_channels, height, width)")
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, num_channels, height, width), got {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor, got dtype {pixel_values.dtype}; convert and "
                "normalise the images (MDEQImageProcessor does this)"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError(f"pixel_values is an empty batch (shape {tuple(pixel_values.shape)})")
        if pixel_values.shape[1] != config.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the model expects config.num_channels="
                f"{config.num_channels}; convert the images (MDEQImageProcessor does this) or build the model "
                f"with num_channels={pixel_values.shape[1]}"
            )
        height, width = pixel_values.shape[-2:]
        if min(height, width) < config.min_image_size:
            raise ValueError(
                f"image of size {height}x{width} is smaller than the stem and branches allow: with "
                f"downsample_times={config.downsample_times} and {config.num_branches} branches each side must be "
                f">= {config.min_image_size} (resize it, e.g. with MDEQImageProcessor)"
            )
        smallest = branch_resolutions(config, height, width)[-1]
        if self.training and pixel_values.shape[0] * smallest[0] * smallest[1] == 1:
            raise ValueError(
                f"a training batch of one {height}x{width} image leaves the lowest-resolution branch at 1x1, and "
                "BatchNorm needs more than one value per channel in training: use a batch of at least 2 or larger "
                "images"
            )
        if not bool(torch.isfinite(pixel_values).all()):
            raise ValueError("pixel_values contain NaN or infinite values")


class MDEQModel(MDEQPreTrainedModel):
    """MDEQ without the final linear classifier.

    Returns a ``DEQModelOutput`` with ``last_hidden_state`` the highest-resolution equilibrium map,
    ``hidden_states`` the equilibrium maps of every branch (highest resolution first; always returned, they
    are this model's output), ``pooler_output`` the ``(B, final_channels)`` features of the classification
    head's feature pathway (``MDEQPooler``: bottlenecks, downsample-and-sum, 1x1 conv, global average pool;
    what the classifier of ``MDEQForImageClassification`` reads), and the solver statistics.
    """

    def __init__(self, config: MDEQConfig) -> None:
        super().__init__(config)
        self.stem = MDEQStem(config)
        self.cell = MDEQCell(config)
        self.deq = DEQFixedPoint(**engine_kwargs(deq_values(config)))
        self.pooler = MDEQPooler(config)
        self.post_init()

    def get_input_embeddings(self) -> MDEQStem:
        """The stem, which maps pixels to the injection (as a ViT's patch embedding does). Accelerate's FSDP2
        preparation and ``enable_input_require_grads`` ask every model for its input embeddings."""
        return self.stem

    def state_spec(self, height: int, width: int) -> StateSpec:
        """Per-sample shapes of the packed multiscale state for an input image of ``height x width``."""
        sizes = branch_resolutions(self.config, height, width)
        return StateSpec(tuple((c, h, w) for c, (h, w) in zip(self.config.channels, sizes)))

    @accepts_solver_budget
    def forward(
        self,
        pixel_values: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DEQModelOutput | tuple:
        self._sync_deq_config()
        self._check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.stem.conv1.weight.dtype)  # e.g. float64 images, float32 model
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        injection = self.stem(pixel_values)
        spec = self.state_spec(*pixel_values.shape[-2:])
        param = next(self.cell.parameters())
        z0 = torch.zeros(pixel_values.shape[0], spec.dim, dtype=param.dtype, device=pixel_values.device)

        def fn(z: Tensor) -> Tensor:
            return pack_state(self.cell(unpack_state(z, spec), injection))[0].to(z.dtype)

        z, result = self.deq(fn, z0)
        states = tuple(unpack_state(z, spec))
        pooled = self.pooler(states)
        output = DEQModelOutput(
            last_hidden_state=states[0],
            pooler_output=pooled,
            hidden_states=states,
            solver_nstep=result.nstep,
            solver_residual=result.residual,
            jacobian_loss=result.jacobian_loss,
        )
        return output if return_dict else output.to_tuple()


class MDEQForImageClassification(MDEQPreTrainedModel):
    """``MDEQModel`` plus a linear classifier on its pooled features.

    With ``labels`` the loss is ``self.loss_function`` (transformers' ``ForSequenceClassificationLoss``, on float32
    logits): cross-entropy, regression for ``num_labels == 1``, BCE for multi-label, following
    ``config.problem_type`` as transformers' classifiers do; with ``num_items_in_batch`` (``Trainer`` with gradient
    accumulation) the sum over this batch divided by it; plus ``jacobian_reg_weight * jacobian_loss`` in training
    when the Jacobian regularisation is on. ``solver_nstep`` and ``solver_residual`` are in every output.
    """

    def __init__(self, config: MDEQConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mdeq = MDEQModel(config)
        self.classifier = nn.Linear(config.final_channels, config.num_labels)
        self.post_init()

    def _classification_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        config = self.config
        if config.problem_type is None:
            if self.num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        _check_labels(labels, logits, config.problem_type)
        if config.problem_type != "single_label_classification":
            labels = labels.float()
        else:
            labels = labels.view(-1)
            bad = labels[((labels < 0) | (labels >= self.num_labels)) & (labels != -100)]
            if bad.numel():
                raise ValueError(
                    f"label {int(bad[0])} is out of range: labels must be in [0, {self.num_labels - 1}] "
                    f"(config.num_labels={self.num_labels}) or -100 to ignore a sample"
                )
        return self.loss_function(labels=labels, pooled_logits=logits.float(), config=config)

    @accepts_solver_budget
    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | Tensor | None = None,
        **kwargs,
    ) -> DEQImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        outputs = self.mdeq(pixel_values, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = share = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = self._classification_loss(logits, labels)
            if num_items_in_batch is not None:  # Trainer, gradient accumulation: sum / num_items_in_batch
                single = self.config.problem_type == "single_label_classification"
                num_items = labels.ne(-100).sum() if single else labels.numel()
                share = accumulation_share(num_items, num_items_in_batch)
                loss = loss * share
            loss = add_jacobian_loss(loss, outputs.jacobian_loss, self.config.jacobian_reg_weight, share)
        output = DEQImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            solver_nstep=outputs.solver_nstep,
            solver_residual=outputs.solver_residual,
            jacobian_loss=outputs.jacobian_loss,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["MDEQForImageClassification", "MDEQModel", "MDEQPreTrainedModel"]
