"""Configuration of the DEQ-Transformer causal language model."""

from __future__ import annotations

from ...configuration_deq import DEQConfig, _is_finite_number, _is_int

NORM_POSITIONS = ("pre", "post")


class DEQTransformerConfig(DEQConfig):
    r"""Configuration of a DEQ-Transformer (Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019).

    The model is one weight-tied transformer block ``F(z, x)`` (causal self-attention with rotary positions and an
    MLP); the token embedding ``x`` is injected at every iteration and the hidden states are the fixed point
    ``z* = F(z*, x)``, found by the configured solver. Field names follow ``transformers``; the DEQ fields
    (solver, gradient estimator, Jacobian regularisation) are those of :class:`~hf_deq.DEQConfig`, here with the
    language-model defaults of the phantom-gradient paper (arXiv 2111.05177): Anderson forward solver, UPG with
    ``k=5``, ``lambda=0.8``.

    Args:
        vocab_size: number of tokens.
        hidden_size: width of the state ``z`` (and of the embeddings).
        num_attention_heads: attention heads; must divide ``hidden_size`` into an even head size (rotary).
        intermediate_size: width of the MLP.
        max_position_embeddings: longest sequence (prompt plus generated tokens) the model accepts.
        trained_context_length: the block size the model was trained on (training sets it from ``--block_size``);
            ``None`` (models saved before this field): unknown, no cropping. Past it, each token's state is that
            of the window of the ``trained_context_length`` tokens ending at it (nanoGPT's crop,
            ``context_window.py``), in generation and in eval forwards; a training forward longer than it is
            refused.
        hidden_act: MLP activation (a key of ``transformers.activations.ACT2FN``).
        layer_norm_eps: epsilon of the LayerNorms.
        rope_theta: base of the rotary position frequencies.
        norm_position: ``"pre"`` (LayerNorm before each sublayer, a final LayerNorm closing ``F`` keeps the state
            bounded) or ``"post"`` (LayerNorm after each residual addition, as in the original DEQ-Transformer).
        hidden_dropout: variational dropout inside ``F`` (one mask per forward, shared by every solver iteration
            and by every position of a sequence) on the attention and MLP outputs.
        embedding_dropout: ordinary dropout on the injected token embedding (computed once per forward).
        weight_norm: weight normalisation of the block's linear layers (recomputed once per forward).
        attention_bias: biases in the attention projections.
        mlp_bias: biases in the MLP.
        initializer_range: std of the normal initialisation of weights.
        tie_word_embeddings: share the LM head weight with the token embedding (with adaptive embeddings: every
            cluster's output weight and projection with its input embedding and projection).
        adaptive_cutoffs: ``None`` (default) for a plain ``vocab_size x hidden_size`` embedding and a linear LM
            head; or the cluster boundaries ``[c_1, ..., c_n]`` (strictly increasing, in ``(0, vocab_size)``) of an
            adaptive input embedding (Baevski & Auli 2019) and adaptive softmax (Grave et al. 2017) as in
            Transformer-XL and the DEQ paper (``[20000, 40000, 200000]`` on WikiText-103): the shortlist
            ``[0, c_1)`` and the tail clusters ``[c_i, c_{i+1})``, token ids sorted by decreasing frequency. The
            causal LM then returns log-probabilities as ``logits``, and no ``logits`` when given ``labels``.
        adaptive_div_val: with ``adaptive_cutoffs``, cluster ``i`` (shortlist ``i = 0``) has embedding size
            ``hidden_size // adaptive_div_val**i``, projected to ``hidden_size`` when ``adaptive_div_val > 1``.
        pad_token_id, bos_token_id, eos_token_id: special tokens.
        use_cache: return the equilibrium key/value cache (used by ``generate``).
    """

    model_type = "deq_transformer"

    vocab_size: int = 32000
    hidden_size: int = 512
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    max_position_embeddings: int = 1024
    trained_context_length: int | None = None
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    norm_position: str = "pre"
    hidden_dropout: float = 0.0
    embedding_dropout: float = 0.0
    weight_norm: bool = False
    attention_bias: bool = False
    mlp_bias: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    adaptive_cutoffs: list[int] | None = None
    adaptive_div_val: int = 4
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True

    # DEQ fields with the LM defaults of the phantom-gradient paper (docs/design.md, "Training recipes").
    solver: str = "anderson"
    solver_max_iter: int = 30
    solver_tol: float = 1e-3
    grad_estimator: str = "upg"
    grad_steps: int = 5
    grad_damping: float = 0.8
    grad_max_iter: int = 35

    def __post_init__(self, **kwargs):
        if isinstance(self.adaptive_cutoffs, (list, tuple)):  # a list as config.json gives back, not shared
            self.adaptive_cutoffs = list(self.adaptive_cutoffs)
        super().__post_init__(**kwargs)
        self.validate_architecture_fields()

    @property
    def num_hidden_layers(self) -> int:
        """One weight-tied block: the key/value cache holds one layer (read by ``DynamicCache(config=...)``)."""
        return 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def use_adaptive_embeddings(self) -> bool:
        """Adaptive input embedding and adaptive softmax (``adaptive_cutoffs`` is set)."""
        return self.adaptive_cutoffs is not None

    def validate_architecture_fields(self) -> None:
        """Raise ``DEQConfigError`` (a ``ValueError``) naming the first invalid architecture field."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise self._error(name, "an integer >= 1")
        if self.hidden_size % self.num_attention_heads != 0:
            raise self._error(
                "hidden_size",
                f"a multiple of num_attention_heads={self.num_attention_heads} (hidden size per head)",
            )
        if self.head_dim % 2 != 0:
            raise self._error(
                "hidden_size",
                f"hidden_size / num_attention_heads even for rotary positions (got head size {self.head_dim})",
            )
        context = self.trained_context_length
        if context is not None and (not _is_int(context) or not 1 <= context <= self.max_position_embeddings):
            raise self._error(
                "trained_context_length",
                f"None or an integer in [1, max_position_embeddings={self.max_position_embeddings}]",
            )
        if self.norm_position not in NORM_POSITIONS:
            raise self._error("norm_position", f"one of {list(NORM_POSITIONS)}")
        for name in ("hidden_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not _is_finite_number(value) or not 0 <= value < 1:
                raise self._error(name, "a number in [0, 1)")
        if not _is_finite_number(self.layer_norm_eps) or not self.layer_norm_eps > 0:
            raise self._error("layer_norm_eps", "a finite number > 0")
        if not _is_finite_number(self.rope_theta) or not self.rope_theta > 0:
            raise self._error("rope_theta", "a finite number > 0")
        if not _is_finite_number(self.initializer_range) or not self.initializer_range >= 0:
            raise self._error("initializer_range", "a finite number >= 0")
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise self._error("hidden_act", f"one of {sorted(ACT2FN)}")
        for name in ("weight_norm", "attention_bias", "mlp_bias", "tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise self._error(name, "True or False")
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value < self.vocab_size):
                raise self._error(name, f"None or a token id in [0, {self.vocab_size})")
        self.validate_adaptive_fields()
        eos = self.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if not all(_is_int(t) and 0 <= t < self.vocab_size for t in eos_ids):
            raise self._error("eos_token_id", f"None, a token id in [0, {self.vocab_size}) or a list of them")

    def validate_adaptive_fields(self) -> None:
        """Raise ``DEQConfigError`` naming ``adaptive_cutoffs`` or ``adaptive_div_val`` when invalid."""
        if not _is_int(self.adaptive_div_val) or self.adaptive_div_val < 1:
            raise self._error("adaptive_div_val", "an integer >= 1")
        cutoffs = self.adaptive_cutoffs
        if cutoffs is None:
            return
        allowed = (
            f"None or a non-empty, strictly increasing list of integers in (0, vocab_size={self.vocab_size}), "
            "e.g. [20000, 40000, 200000]"
        )
        if not isinstance(cutoffs, list) or not cutoffs or not all(_is_int(c) for c in cutoffs):
            raise self._error("adaptive_cutoffs", allowed)
        if not all(0 < c < self.vocab_size for c in cutoffs) or any(
            a >= b for a, b in zip(cutoffs, cutoffs[1:])
        ):
            raise self._error("adaptive_cutoffs", allowed)
        smallest = self.hidden_size // self.adaptive_div_val ** len(cutoffs)
        if smallest < 1:
            raise self._error(
                "adaptive_div_val",
                f"an integer >= 1 with hidden_size // adaptive_div_val**{len(cutoffs)} >= 1 (the embedding size of the "
                f"last of the {len(cutoffs)} tail clusters; hidden_size={self.hidden_size})",
            )


__all__ = ["DEQTransformerConfig"]
