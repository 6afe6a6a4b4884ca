"""DEQ-Transformer: a causal language model whose hidden states are the fixed point of one weight-tied block.

Bai, Kolter, Koltun, "Deep Equilibrium Models" (NeurIPS 2019); trained with the phantom gradients of Geng et al.,
"On Training Implicit Models" (NeurIPS 2021, arXiv 2111.05177).

``F(z, x)`` is one transformer block (causal self-attention with rotary positions, then an MLP) applied to
``z + x``, where ``x`` is the (normalised) token embedding, injected at every iteration. The hidden states are
``z* = F(z*, x)``; the engine (``hf_deq.deq``) sees the whole sequence as one state of shape
``(batch, seq_len * hidden_size)``, so a sample is one sequence and per-sample stopping stops whole sequences.

Generation with an equilibrium cache: attention is causal, so the equilibrium state of token ``t`` depends only on
tokens ``<= t`` and stays the same when later tokens are appended. The keys and values computed from the
equilibrium states of past tokens are therefore cached (a ``transformers`` ``Cache`` with one layer), and each
new token solves a DEQ over its own state only, attending to the cached keys/values as fixed context.

With ``config.adaptive_cutoffs`` the token embedding is an adaptive input embedding and the LM head an adaptive
softmax tied to it (``adaptive_softmax.py``), as in the DEQ paper's WikiText-103 model.
"""

from __future__ import annotations

import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache

from ...deq import DEQFixedPoint, VariationalDropout, apply_weight_norm
from ...deq_fields import deq_values, engine_kwargs
from ...modeling_deq import DEQModelMixin, accepts_solver_budget
from ...modeling_outputs import CACHE_FIELD, DEQCausalLMOutput, DEQModelOutput
from ...modeling_utils import accumulation_share, add_jacobian_loss, init_weight_norm_
from .adaptive_softmax import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from .configuration_deq_transformer import DEQTransformerConfig
from .context_window import past_context_forward, remember_context
from .loss_deq_transformer import adaptive_causal_lm_loss, causal_lm_loss, check_lm_labels


class DEQTransformerRotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021): ``cos``/``sin`` tables for the given positions."""

    def __init__(self, config: DEQTransformerConfig) -> None:
        super().__init__()
        self.dim = config.head_dim
        self.base = float(config.rope_theta)
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float, device=device) / self.dim
        return 1.0 / (self.base**exponents)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q``, ``k``: ``(B, heads, T, head_dim)``; ``cos``, ``sin``: ``(B, T, head_dim)``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class DEQTransformerAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions (``torch`` SDPA). ``past_key_value`` holds the keys
    and values of earlier (equilibrium) positions, attended to as fixed context."""

    def __init__(self, config: DEQTransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.hidden_size = config.hidden_size
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        is_causal: bool,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        keys, values = k, v
        if past_key_value is not None:
            keys = torch.cat((past_key_value[0].to(k.dtype), k), dim=2)
            values = torch.cat((past_key_value[1].to(v.dtype), v), dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attention_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(batch, length, self.hidden_size)
        return self.o_proj(out), (k, v)


class DEQTransformerMLP(nn.Module):
    def __init__(self, config: DEQTransformerConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_act]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class DEQTransformerBlock(nn.Module):
    """The weight-tied cell ``F(z, x)``.

    ``pre``: ``h = z + x; h = h + attn(LN1(h)); h = h + mlp(LN2(h)); F = LN_out(h)`` (the closing LayerNorm keeps
    the equilibrium state bounded). ``post``: ``h = LN1(z + x + attn(z + x)); F = LN2(h + mlp(h))``. The
    attention and MLP outputs go through variational dropout (one mask per forward pass, shared along the
    sequence and by every solver iteration, so that ``F`` stays one fixed map).
    """

    def __init__(self, config: DEQTransformerConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attn = DEQTransformerAttention(config)
        self.mlp = DEQTransformerMLP(config)
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if self.pre_norm else None
        self.attn_dropout = VariationalDropout(config.hidden_dropout, broadcast_dims=(1,))
        self.mlp_dropout = VariationalDropout(config.hidden_dropout, broadcast_dims=(1,))

    def forward(
        self,
        z: torch.Tensor,
        injection: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        is_causal: bool,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h = z + injection
        if self.pre_norm:
            a, kv = self.attn(self.ln_1(h), position_embeddings, attention_mask, is_causal, past_key_value)
            h = h + self.attn_dropout(a)
            h = h + self.mlp_dropout(self.mlp(self.ln_2(h)))
            return self.ln_out(h), kv
        a, kv = self.attn(h, position_embeddings, attention_mask, is_causal, past_key_value)
        h = self.ln_1(h + self.attn_dropout(a))
        return self.ln_2(h + self.mlp_dropout(self.mlp(h))), kv


class DEQTransformerPreTrainedModel(DEQModelMixin, PreTrainedModel):
    """Weight initialisation and the capability attributes shared by the DEQ-Transformer models."""

    config_class = DEQTransformerConfig
    config: DEQTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False  # the solver runs without a graph; phantom gradients bound memory
    _no_split_modules = ["DEQTransformerBlock"]
    _supports_sdpa = True  # attention always runs through torch SDPA
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = False  # data-dependent solver loop

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init_weight_norm_(module, partial(init.normal_, mean=0.0, std=std))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DEQTransformerRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(module.inv_freq.device))

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """``PreTrainedModel.resize_token_embeddings``; refused (``NotImplementedError``) with adaptive embeddings,
        whose vocabulary is laid out in frequency clusters fixed by ``config.adaptive_cutoffs`` (called without
        arguments it returns the input embedding, as it does without adaptive embeddings)."""
        if self.config.use_adaptive_embeddings:
            if new_num_tokens is None and pad_to_multiple_of is None:
                return self.get_input_embeddings()
            raise NotImplementedError(
                f"resize_token_embeddings is not supported with adaptive embeddings (adaptive_cutoffs="
                f"{self.config.adaptive_cutoffs}): the vocabulary is split into frequency clusters with their own "
                "embedding sizes. Build a new model with the new vocab_size and adaptive_cutoffs instead."
            )
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)


def _pick_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the key/value cache as `cache` or as `past_key_values`, not both")
    if past_key_values is not None and CACHE_FIELD == "cache":  # transformers' own models warn the same way
        warnings.warn("`past_key_values` is deprecated; use `cache`", FutureWarning, stacklevel=3)
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(
            f"the key/value cache must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}"
        )
    return cache


def _check_adaptive_module(config: DEQTransformerConfig, value: nn.Module, expected: type, what: str) -> None:
    if config.use_adaptive_embeddings and not isinstance(value, expected):
        raise TypeError(
            f"this model uses adaptive embeddings (adaptive_cutoffs={config.adaptive_cutoffs}): the {what} must be "
            f"an {expected.__name__}, got {type(value).__name__}"
        )


class DEQTransformerModel(DEQTransformerPreTrainedModel):
    """The DEQ-Transformer without a head: returns the equilibrium hidden states ``z*`` of shape
    ``(batch, seq_len, hidden_size)`` with per-sequence solver statistics."""

    def __init__(self, config: DEQTransformerConfig) -> None:
        super().__init__(config)
        if config.use_adaptive_embeddings:
            self.embed_tokens = AdaptiveEmbedding(
                config.vocab_size, config.hidden_size, config.adaptive_cutoffs, config.adaptive_div_val
            )
        else:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.injection_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.rotary_emb = DEQTransformerRotaryEmbedding(config)
        self.block = DEQTransformerBlock(config)
        if config.weight_norm:
            apply_weight_norm(self.block)
        self.deq = DEQFixedPoint(**engine_kwargs(deq_values(config)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding | AdaptiveEmbedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding | AdaptiveEmbedding) -> None:
        _check_adaptive_module(self.config, value, AdaptiveEmbedding, "input embedding")
        self.embed_tokens = value

    # -- input checks -------------------------------------------------------------------------------------
    def _check_input_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"input_ids must be integer token ids (torch.long), got dtype {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise ValueError("input_ids is empty")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"input_ids contain token id {bad}, outside the vocabulary [0, {self.config.vocab_size}) of this "
                "model (config.vocab_size); check that the tokenizer matches the model"
            )

    def _attention_mask(
        self, attention_mask: torch.Tensor | None, batch: int, length: int, past_length: int, device
    ) -> tuple[torch.Tensor | None, bool]:
        """The SDPA mask (``True`` = may attend) and ``is_causal`` for queries at ``past_length + [0, length)``
        over keys ``[0, past_length + length)``."""
        total = past_length + length
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape != (batch, total):
                raise ValueError(
                    f"attention_mask must have shape (batch, past_length + seq_len) = {(batch, total)}, got "
                    f"{tuple(attention_mask.shape)}"
                )
            if bool(attention_mask.bool().all()):
                attention_mask = None
        if attention_mask is None:
            if past_length == 0:
                return None, length > 1
            if length == 1:
                return None, False
        query_pos = torch.arange(past_length, total, device=device)
        key_pos = torch.arange(total, device=device)
        allowed = key_pos[None, :] <= query_pos[:, None]  # (T, S)
        allowed = allowed[None, None].expand(batch, 1, length, total)
        if attention_mask is not None:
            keep = attention_mask.to(device=device).bool()[:, None, None, :]
            # a padded query still attends to itself, so that no row of the softmax is empty
            allowed = (allowed & keep) | (key_pos[None, :] == query_pos[:, None])[None, None]
        return allowed, False

    def _solve_and_cache(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
        past_length: int,
        use_cache: bool,
    ):
        """Solve for the equilibrium states of ``embeds`` (at ``position_ids``, after the ``past_length`` cached
        positions); with ``use_cache``, append their keys/values to ``cache``. Returns ``(states, result,
        injection)``."""
        batch, length, hidden = embeds.shape
        device = embeds.device
        mask, is_causal = self._attention_mask(attention_mask, batch, length, past_length, device)
        injection = self.embedding_dropout(self.injection_norm(embeds))
        rope = self.rotary_emb(position_ids.to(device), injection.dtype)
        past_kv = None
        if past_length > 0:
            layer = cache.layers[0]
            past_kv = (layer.keys, layer.values)

        last_call: list = []  # (input, keys/values) of the latest evaluation of F without autograd

        def fn(z_flat: torch.Tensor) -> torch.Tensor:
            z = z_flat.view(batch, length, hidden)
            out, kv = self.block(z, injection, rope, mask, is_causal, past_kv)
            if use_cache and not torch.is_grad_enabled():
                last_call[:] = [z_flat, kv]
            return out.reshape(batch, length * hidden).to(z_flat.dtype)

        z0 = torch.zeros(batch, length * hidden, dtype=injection.dtype, device=device)
        stored_length, previous = getattr(cache, "deq_last_state", (None, None))
        if past_length > 0 and stored_length == past_length and previous.shape == (batch, hidden):
            # Warm start from the last cached position's equilibrium: the fixed point is the same, but the
            # solver needs about half the iterations per generated token (scripts/benchmark_generation.py).
            z0 = previous.to(injection.dtype).repeat(1, length)
        if self.training and torch.is_grad_enabled() and self.config.jacobian_reg_weight > 0:
            # The Jacobian term is differentiated twice; only the math SDPA backend has a double backward.
            with sdpa_kernel(SDPBackend.MATH):
                z_flat, result = self.deq(fn, z0)
        else:
            z_flat, result = self.deq(fn, z0)
        hidden_states = z_flat.view(batch, length, hidden)

        if use_cache:
            # Keys/values at the equilibrium: the fixed context of later tokens. A solver that stops on
            # convergence returns the input of its last evaluation of F, whose keys/values are then reused.
            if last_call and not self.training and torch.equal(last_call[0], z_flat):
                k, v = last_call[1]
            else:
                with torch.no_grad():
                    _, (k, v) = self.block(
                        hidden_states.detach(), injection.detach(), rope, mask, is_causal, past_kv
                    )
            cache.update(k, v, 0)
            cache.deq_last_state = (past_length + length, hidden_states[:, -1].detach())

        return hidden_states, result, injection

    @accepts_solver_budget
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DEQModelOutput | tuple:
        """Solve for the equilibrium hidden states.

        ``cache`` (``past_key_values`` in older transformers) holds the keys/values of earlier equilibrium
        positions; then ``input_ids`` are only the new tokens and only their states are solved for. Unused
        keyword arguments from ``generate``/``Trainer`` (``cache_position``, ``output_attentions``, ...) are
        accepted and ignored.
        """
        self._sync_deq_config()
        cache = _pick_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            self._check_input_ids(input_ids)
            embeds = self.embed_tokens(input_ids)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), got "
                    f"{tuple(inputs_embeds.shape)}"
                )
            if not inputs_embeds.is_floating_point():
                raise ValueError(
                    f"inputs_embeds must be a floating-point tensor, got dtype {inputs_embeds.dtype}"
                )
            if inputs_embeds.numel() == 0:
                raise ValueError(f"inputs_embeds is empty (shape {tuple(inputs_embeds.shape)})")
            if not bool(torch.isfinite(inputs_embeds).all()):
                raise ValueError("inputs_embeds contain NaN or infinite values")
            embeds = inputs_embeds.to(next(self.embed_tokens.parameters()).dtype)
        batch, length, hidden = embeds.shape
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length(0) if cache is not None else 0
        if past_length + length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {past_length + length} (cached {past_length} + new {length}) is longer than "
                f"max_position_embeddings={self.config.max_position_embeddings} of this model"
            )
        device = embeds.device
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=device).expand(
                batch, length
            )
        elif position_ids.shape[-1] != length:
            raise ValueError(
                f"position_ids must have seq_len={length} entries, got {tuple(position_ids.shape)}"
            )
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(
                f"position id {int(position_ids.max())} is not below max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        context = self.config.trained_context_length
        if context is not None and past_length + length > context:
            # Past the trained context: each later token sees only the last `context` tokens (context_window.py).
            hidden_states, nstep, residual, jacobian_loss = past_context_forward(
                self, embeds, attention_mask, position_ids, cache, past_length, use_cache
            )
            injection = self.injection_norm(embeds)
        else:
            hidden_states, result, injection = self._solve_and_cache(
                embeds, attention_mask, position_ids, cache, past_length, use_cache
            )
            nstep, residual, jacobian_loss = result.nstep, result.residual.float(), result.jacobian_loss
            if use_cache and context is not None:
                remember_context(cache, embeds, context)

        output = DEQModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=(injection, hidden_states) if output_hidden_states else None,
            solver_nstep=nstep,
            solver_residual=residual,
            jacobian_loss=jacobian_loss,
            **{CACHE_FIELD: cache if use_cache else None},
        )
        return output if return_dict is not False else output.to_tuple()


class DEQTransformerForCausalLM(DEQTransformerPreTrainedModel, GenerationMixin):
    """DEQ-Transformer with a language-modelling head (tied to the token embedding by default).

    ``loss`` (when ``labels`` are given) is the next-token cross entropy (``self.loss_function``, by default
    ``causal_lm_loss``: transformers' ``ForCausalLMLoss``) plus ``jacobian_reg_weight`` times the Jacobian
    regularisation term in training. Every output carries ``solver_nstep`` and ``solver_residual``
    (shape ``(batch,)``).

    With adaptive embeddings (``config.adaptive_cutoffs``) the head is a ``ProjectedAdaptiveLogSoftmax`` whose
    cluster weights and projections are tied to those of the adaptive input embedding (``tie_word_embeddings``).
    Then ``logits`` are full-vocabulary log-probabilities (in float32 at least): valid logits for softmax, argmax,
    sampling and ``generate``, and ``loss`` is exactly their next-token negative log-likelihood. Given ``labels``
    the loss is computed without materialising them (only a target's own tail cluster is evaluated) and
    ``logits`` is ``None``, as in Transformer-XL; call the model without ``labels`` for the log-probabilities.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DEQTransformerConfig) -> None:
        super().__init__(config)
        self.model = DEQTransformerModel(config)
        if config.use_adaptive_embeddings:
            self.lm_head = ProjectedAdaptiveLogSoftmax(
                config.vocab_size, config.hidden_size, config.adaptive_cutoffs, config.adaptive_div_val
            )
            # transformers ties {target: source} parameters by name (read in post_init and from_pretrained)
            self._tied_weights_keys = self.adaptive_tied_weights_keys(self.lm_head)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @staticmethod
    def adaptive_tied_weights_keys(head: ProjectedAdaptiveLogSoftmax) -> dict[str, str]:
        """Each cluster's output weight and projection tied to the embedding's (``{target: source}``)."""
        keys = {}
        for i, proj in enumerate(head.out_projs):
            keys[f"lm_head.out_layers.{i}.weight"] = f"model.embed_tokens.emb_layers.{i}.weight"
            if isinstance(proj, nn.Linear):
                keys[f"lm_head.out_projs.{i}.weight"] = f"model.embed_tokens.emb_projs.{i}.weight"
        return keys

    def get_input_embeddings(self) -> nn.Embedding | AdaptiveEmbedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding | AdaptiveEmbedding) -> None:
        self.model.set_input_embeddings(value)

    @property
    def loss_function(self):
        """The loss of ``logits`` and ``labels``, called as transformers' causal LMs call theirs (``logits=``,
        ``labels=``, ``vocab_size=``, ``num_items_in_batch=``); assigning ``model.loss_function = fn`` replaces it.
        By default ``causal_lm_loss``. With adaptive embeddings the loss is ``adaptive_causal_lm_loss`` of the
        hidden states instead (the full logits are never formed)."""
        return self.__dict__.get("_loss_function", causal_lm_loss)

    @loss_function.setter
    def loss_function(self, value) -> None:
        self._loss_function = value

    def get_output_embeddings(self) -> nn.Linear | ProjectedAdaptiveLogSoftmax:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear | ProjectedAdaptiveLogSoftmax) -> None:
        _check_adaptive_module(self.config, new_embeddings, ProjectedAdaptiveLogSoftmax, "output embedding")
        self.lm_head = new_embeddings

    @accepts_solver_budget
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> DEQCausalLMOutput | tuple:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        shift_labels = kwargs.get("shift_labels")  # pre-shifted targets (sequence/context parallelism)
        with_targets = labels is not None or shift_labels is not None
        if with_targets:
            logits_to_keep = 0
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = loss = None
        if labels is not None:
            check_lm_labels(labels, hidden_states.shape[:2], self.config.vocab_size)
        if not self.config.use_adaptive_embeddings:
            logits = self.lm_head(hidden_states[:, keep, :])
            if with_targets:
                if shift_labels is not None:
                    check_lm_labels(
                        shift_labels, hidden_states.shape[:2], self.config.vocab_size, "shift_labels"
                    )
                extra = (
                    {"shift_labels": shift_labels} if shift_labels is not None else {}
                )  # as transformers' LMs
                loss = self.loss_function(
                    logits=logits,
                    labels=labels,
                    vocab_size=self.config.vocab_size,
                    num_items_in_batch=num_items_in_batch,
                    **extra,
                )
        elif with_targets:
            head = self.lm_head
            loss = adaptive_causal_lm_loss(head, hidden_states, labels, num_items_in_batch, shift_labels)
        else:
            logits = self.lm_head.log_prob(hidden_states[:, keep, :])
        if loss is not None:
            share = None
            if num_items_in_batch is not None:
                targets = shift_labels if shift_labels is not None else labels[:, 1:]
                share = accumulation_share(targets.ne(-100).sum(), num_items_in_batch)
            loss = add_jacobian_loss(loss, outputs.jacobian_loss, self.config.jacobian_reg_weight, share)
        output = DEQCausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            solver_nstep=outputs.solver_nstep,
            solver_residual=outputs.solver_residual,
            jacobian_loss=outputs.jacobian_loss,
            **{CACHE_FIELD: outputs.get(CACHE_FIELD)},
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = [
    "DEQTransformerForCausalLM",
    "DEQTransformerModel",
    "DEQTransformerPreTrainedModel",
]
