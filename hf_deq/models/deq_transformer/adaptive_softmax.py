"""Adaptive input embedding (Baevski & Auli, ICLR 2019) and adaptive softmax (Grave et al., ICML 2017), in the
projected, tied form of Transformer-XL (Dai et al. 2019) that the DEQ-Transformer uses on WikiText-103.

The vocabulary (token ids sorted by decreasing frequency) is split by ``cutoffs`` ``[c_1, ..., c_n]`` into a
shortlist ``[0, c_1)`` and ``n`` tail clusters ``[c_i, c_{i+1})``. Cluster ``i`` has embedding size
``hidden_size // div_val**i``; when ``div_val > 1`` every cluster also has a projection between its size and
``hidden_size`` (a ``Linear(d_i, hidden_size, bias=False)``: the embedding maps ``d_i -> hidden_size`` with it, the
softmax maps ``hidden_size -> d_i`` with its transpose, so both can share it). With ``div_val == 1`` every cluster
has ``hidden_size`` dimensions and no projection.

Every cluster's layers run on every forward, on an empty selection when no token falls in the cluster, so that
every parameter always takes part in the graph (a zero gradient rather than none: what distributed data parallel
and "every parameter gets a gradient" checks expect).

These modules are plain PyTorch and know nothing of the model config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cluster_bounds(vocab_size: int, cutoffs: list[int]) -> list[tuple[int, int]]:
    """``[(0, c_1), (c_1, c_2), ..., (c_n, vocab_size)]``."""
    edges = [0, *cutoffs, vocab_size]
    return list(zip(edges[:-1], edges[1:]))


def cluster_dims(hidden_size: int, num_clusters: int, div_val: int) -> list[int]:
    """Embedding size of each cluster (shortlist first): ``hidden_size // div_val**i``."""
    return [hidden_size // div_val**i for i in range(num_clusters)]


def _make_projections(hidden_size: int, dims: list[int], div_val: int) -> nn.ModuleList:
    if div_val == 1:
        return nn.ModuleList(nn.Identity() for _ in dims)
    return nn.ModuleList(nn.Linear(d, hidden_size, bias=False) for d in dims)


class _ClusteredVocabulary(nn.Module):
    """The layout shared by the embedding and the softmax: cluster bounds and embedding sizes."""

    def __init__(self, vocab_size: int, hidden_size: int, cutoffs: list[int], div_val: int) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size, self.div_val = vocab_size, hidden_size, div_val
        self.cutoffs = list(cutoffs)
        self.bounds = cluster_bounds(vocab_size, self.cutoffs)
        self.dims = cluster_dims(hidden_size, len(self.bounds), div_val)

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, cutoffs={self.cutoffs}, div_val={self.div_val}, dims={self.dims}"
        )


class AdaptiveEmbedding(_ClusteredVocabulary):
    """Token ids ``(...)`` -> embeddings ``(..., hidden_size)``: the embedding of a token in cluster ``i`` is
    ``emb_projs[i](emb_layers[i](id - start_i))``.

    Not scaled by ``sqrt(hidden_size)`` as in Transformer-XL: the DEQ-Transformer LayerNorms the embedding before
    injecting it, which makes such a constant factor irrelevant (and a plain ``nn.Embedding`` is not scaled either).
    """

    def __init__(self, vocab_size: int, hidden_size: int, cutoffs: list[int], div_val: int) -> None:
        super().__init__(vocab_size, hidden_size, cutoffs, div_val)
        self.emb_layers = nn.ModuleList(
            nn.Embedding(end - start, d) for (start, end), d in zip(self.bounds, self.dims)
        )
        self.emb_projs = _make_projections(hidden_size, self.dims, div_val)

    @property
    def dtype(self) -> torch.dtype:
        return self.emb_layers[0].weight.dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        weight = self.emb_layers[0].weight
        out = weight.new_zeros(flat.numel(), self.hidden_size)
        for (start, end), layer, proj in zip(self.bounds, self.emb_layers, self.emb_projs):
            index = ((flat >= start) & (flat < end)).nonzero().squeeze(1)
            out = out.index_copy(0, index, proj(layer(flat[index] - start)).to(out.dtype))
        return out.view(*input_ids.shape, self.hidden_size)


class ProjectedAdaptiveLogSoftmax(_ClusteredVocabulary):
    """Adaptive softmax over ``vocab_size`` tokens from hidden states of size ``hidden_size``.

    The head is a softmax over the shortlist and one entry per tail cluster (``cluster``, a
    ``Linear(dims[0], num_tail_clusters)``); a token of tail cluster ``i`` has probability
    ``p(cluster i) * p(token | cluster i)``, the second factor a softmax over the cluster with ``out_layers[i]``.
    Cluster ``i``'s logits are ``out_layers[i](h @ out_projs[i].weight)`` (``h`` unprojected when
    ``div_val == 1``). ``out_layers[i].weight`` / ``out_projs[i].weight`` have the shapes of the adaptive
    embedding's ``emb_layers[i].weight`` / ``emb_projs[i].weight``, so the model can tie them; the biases
    (``vocab_size`` in all) and the cluster entries are the softmax's own.

    ``log_prob(h)`` returns full-vocabulary log-probabilities; ``nll(h, target)`` computes the negative
    log-likelihood of targets without them: the head for every position, a tail cluster only for the positions
    whose target is in it. Both work in at least float32 (float64 stays float64).
    """

    def __init__(self, vocab_size: int, hidden_size: int, cutoffs: list[int], div_val: int) -> None:
        super().__init__(vocab_size, hidden_size, cutoffs, div_val)
        self.shortlist_size = self.bounds[0][1]
        self.num_tail_clusters = len(self.bounds) - 1
        self.out_layers = nn.ModuleList(
            nn.Linear(d, end - start) for (start, end), d in zip(self.bounds, self.dims)
        )
        self.out_projs = _make_projections(hidden_size, self.dims, div_val)
        self.cluster = nn.Linear(self.dims[0], self.num_tail_clusters)

    def _project(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        proj = self.out_projs[i]
        return hidden if isinstance(proj, nn.Identity) else hidden @ proj.weight

    @staticmethod
    def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.promote_types(dtype, torch.float32)

    def _head_log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, hidden_size)`` -> ``(N, shortlist_size + num_tail_clusters)`` log-probabilities."""
        shortlist = self.out_layers[0]
        weight = torch.cat((shortlist.weight, self.cluster.weight))
        bias = torch.cat((shortlist.bias, self.cluster.bias))
        logits = F.linear(self._project(hidden, 0), weight, bias)
        return F.log_softmax(logits.to(self._compute_dtype(logits.dtype)), dim=-1)

    def _tail_log_prob(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """``(N, hidden_size)`` -> ``(N, cluster size)`` log-probabilities within tail cluster ``i >= 1``."""
        logits = self.out_layers[i](self._project(hidden, i))
        return F.log_softmax(logits.to(self._compute_dtype(logits.dtype)), dim=-1)

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probabilities ``(..., vocab_size)`` of hidden states ``(..., hidden_size)``."""
        flat = hidden.reshape(-1, self.hidden_size)
        head = self._head_log_prob(flat)
        parts = [head[:, : self.shortlist_size]]
        for i in range(1, len(self.bounds)):
            cluster = self.shortlist_size + i - 1
            parts.append(head[:, cluster : cluster + 1] + self._tail_log_prob(flat, i))
        return torch.cat(parts, dim=-1).view(*hidden.shape[:-1], self.vocab_size)

    def nll(self, hidden: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Negative log-likelihood ``(N,)`` of ``target`` ``(N,)`` under ``hidden`` ``(N, hidden_size)``; ``0`` at
        positions whose target is ``ignore_index``."""
        head = self._head_log_prob(hidden)
        nll = head.new_zeros(target.shape[0])
        for i, (start, end) in enumerate(self.bounds):
            index = ((target >= start) & (target < end) & (target != ignore_index)).nonzero().squeeze(1)
            local = (target[index] - start)[:, None]
            if i == 0:
                log_p = head[index].gather(1, local).squeeze(1)
            else:
                tail = self._tail_log_prob(hidden[index], i)
                log_p = head[index, self.shortlist_size + i - 1] + tail.gather(1, local).squeeze(1)
            nll = nll.index_copy(0, index, -log_p)
        return nll

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``log_prob``: what the causal LM returns as ``logits``."""
        return self.log_prob(hidden)


__all__ = ["AdaptiveEmbedding", "ProjectedAdaptiveLogSoftmax", "cluster_bounds", "cluster_dims"]
