"""The two benchmark cells, both written as ``f(z) = cell(z, x_inj)`` on a flattened ``(B, D)`` state.

* ``conv``: an MDEQ-like residual block, ``GN(relu(z + GN(conv2(relu(GN(conv1(z))))) + x_inj))`` with
  weight-tied 3x3 convolutions, state ``(B, 32, 32, 32)``; ``x_inj`` is a convolution of a fixed random image.
* ``transformer``: a pre-LN causal transformer block (d_model 128, 4 heads, MLP 4x) on ``u = z + x_inj``:
  ``z' = LN(h + MLP(LN(h)))`` with ``h = u + attn(LN(u))``; ``x_inj`` is a learned embedding of fixed random
  token ids, state ``(B, 64, 128)``.

A ``Bench`` holds one cell with its fixed input, initial state and loss probe; its ``fn`` counts its calls and
the backward passes through it and clocks the time inside ``f`` (``measure.Counter``, ``measure.FClock``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .measure import CountBackward, Counter, FClock

CELLS = ("conv", "transformer")
#: Batch sizes of a full run and of ``quick`` (a smoke run, not for quoting).
BATCH_SIZES = {"conv": 32, "transformer": 16}
QUICK_BATCH_SIZE = 4


class ConvCell(nn.Module):
    """MDEQ-like residual block with weight-tied 3x3 convolutions and GroupNorm."""

    def __init__(self, channels: int = 32, size: int = 32, groups: int = 8) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.inject = nn.Conv2d(3, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, channels)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.gn3 = nn.GroupNorm(groups, channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=(1.0 / (9 * channels)) ** 0.5)
        # A strong injection (std ~2 against the unit-variance state) makes the map contractive enough for
        # Anderson to reach a relative residual of 1e-3 in ~15 evaluations.
        nn.init.normal_(self.inject.weight, std=2.0 * (1.0 / 27) ** 0.5)

    def make_input(self, batch: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch, 3, *self.shape[1:], generator=generator)

    def injection(self, x: Tensor) -> Tensor:
        return self.inject(x)

    def f(self, z: Tensor, x_inj: Tensor) -> Tensor:
        z4 = z.view(z.shape[0], *self.shape)
        y = F.relu(self.gn1(self.conv1(z4)))
        y = self.gn2(self.conv2(y))
        return self.gn3(F.relu(z4 + y + x_inj)).flatten(1)


class TransformerCell(nn.Module):
    """Pre-LN causal transformer block on ``z + x_inj`` with a final LayerNorm."""

    def __init__(self, d_model: int = 128, heads: int = 4, seq: int = 64, vocab: int = 1000) -> None:
        super().__init__()
        self.shape = (seq, d_model)
        self.heads = heads
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.ln_out = nn.LayerNorm(d_model)
        # Embedding std 0.4 against the unit-variance state: Anderson needs ~15 evaluations for 1e-3, about as
        # many as on the conv cell (std 1 makes the map so contractive that every solver needs ~5).
        nn.init.normal_(self.embed.weight, std=0.4)

    def make_input(self, batch: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.vocab, (batch, self.shape[0]), generator=generator)

    def injection(self, ids: Tensor) -> Tensor:
        return self.embed(ids)

    def f(self, z: Tensor, x_inj: Tensor) -> Tensor:
        batch = z.shape[0]
        seq, d = self.shape
        u = z.view(batch, seq, d) + x_inj
        q, k, v = (
            self.qkv(self.ln1(u)).view(batch, seq, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = u + self.proj(attn.transpose(1, 2).reshape(batch, seq, d))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.ln_out(h).flatten(1)


@dataclass
class Bench:
    """One cell with its fixed input, initial state, loss probe and the settings of the run."""

    name: str
    cell: nn.Module
    x: Tensor
    z0: Tensor
    probe: Tensor
    device: torch.device
    dtype: torch.dtype
    counter: Counter = field(default_factory=Counter)
    clock: FClock | None = None
    z_star: Tensor | None = None

    def injection(self, grad: bool = True) -> Tensor:
        with torch.set_grad_enabled(grad), self.autocast():
            return self.cell.injection(self.x)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def fn(self, x_inj: Tensor) -> Callable[[Tensor], Tensor]:
        """``f(z) = cell(z, x_inj)``, counting and clocking itself when enabled."""
        cell, counter, clock = self.cell, self.counter, self.clock

        def f(z: Tensor) -> Tensor:
            token = clock.start() if clock is not None and clock.enabled else None
            with self.autocast():
                out = cell.f(z, x_inj)
            if token is not None:
                clock.stop(token)
            if counter.enabled:
                counter.forward += 1
                if out.requires_grad:
                    out = CountBackward.apply(out, counter)
            return out

        return f

    def loss(self, z: Tensor) -> Tensor:
        return (z.float() * self.probe).sum()

    def zero_grad(self) -> None:
        for p in self.cell.parameters():
            p.grad = None

    def rel_residual(self, z: Tensor) -> float:
        """Max over the batch of ``||f(z) - z|| / ||f(z)||``, recomputed here for any solver."""
        with torch.no_grad():
            fz = self.fn(self.injection(grad=False))(z.to(self.z0.dtype)).float()
            return float(((fz - z.float()).norm(dim=1) / fz.norm(dim=1).clamp_min(1e-12)).max())


def build_bench(
    name: str, device: torch.device, dtype: torch.dtype, batch_size: int | None = None, seed: int = 0
) -> Bench:
    """The cell ``name`` (one of ``CELLS``) with a fixed random input of ``batch_size`` (default
    ``BATCH_SIZES[name]``), weights seeded by ``seed``."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose from {', '.join(CELLS)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cell = ConvCell() if name == "conv" else TransformerCell()
    batch = batch_size or BATCH_SIZES[name]
    x = cell.make_input(batch, gen)
    dim = math.prod(cell.shape)
    probe = torch.randn(batch, dim, generator=gen) / dim**0.5
    cell = cell.to(device)
    return Bench(
        name=name,
        cell=cell,
        x=x.to(device),
        z0=torch.zeros(batch, dim, device=device),
        probe=probe.to(device),
        device=device,
        dtype=dtype,
        clock=FClock(device),
    )
