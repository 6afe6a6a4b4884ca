"""Named DEQ-Transformer presets (``hf_deq.create_config("deq-transformer-small")``).

Parameter counts (tied input/output embedding counted once; ``python scripts/benchmark_generation.py
--count_parameters`` prints them):

- ``deq-transformer-wt103`` (95,241,188): the paper's block (hidden 700, 10 heads of 70, MLP 48000 as in the
  official ``--d_inner 48000``, post-LayerNorm, weight norm; 69.26M) with the tied adaptive input embedding and
  adaptive softmax of the paper (``--adaptive --div_val 4``, cutoffs 20k/40k/200k) over the WikiText-103 word
  vocabulary (267,735 tokens): cluster embeddings of size 700/175/43/10 (25.06M) with their projections to 700
  (0.65M), shared by input and output, plus the softmax's own biases and cluster entries (0.27M). The paper's
  ~98M (97.9M by the official code's count) also include parts of its block this one replaces, the 1x1-conv input
  injection into q/k/v (1.47M) and the relative-position projection (0.49M) (additive injection and rotary
  positions here), and count its output projections again (0.65M: tied to the embedding's by sharing data, and
  the shortlist's left untied, ``tie_projs=[False, True, True, True]``; all four are tied here). With a plain
  tied embedding instead (``adaptive_cutoffs=None``) the preset has 256,678,900 parameters.
- ``deq-transformer-small`` (7,346,688): hidden 512, 8 heads, MLP 2048, an 8,192-token vocabulary (the size of
  the BPE tokenizer ``scripts/train_deq_lm.py --train_tokenizer bpe`` trains by default); 4.2M are embedding.
- ``deq-transformer-char`` (214,656 with its placeholder 128-token vocabulary, 206,976 with the 68 tokens of the
  tinyshakespeare char tokenizer): the CPU demo (hidden 128, 4 heads, MLP 512).
- ``test_deq_transformer_tiny`` (11,712) / ``test_deq_transformer_tiny_post`` (11,872) /
  ``test_deq_transformer_tiny_adaptive`` (11,698): for tests.
"""

from __future__ import annotations

from ...variants import Variant, register_variant
from .configuration_deq_transformer import DEQTransformerConfig
from .modeling_deq_transformer import DEQTransformerForCausalLM

WT103_VOCAB_SIZE = 267735
WT103_ADAPTIVE_CUTOFFS = (20000, 40000, 200000)


def _register(name: str, description: str, tags: tuple[str, ...] = (), **config_kwargs) -> None:
    register_variant(
        Variant(
            name=name,
            config_class=DEQTransformerConfig,
            config_kwargs=config_kwargs,
            model_class=DEQTransformerForCausalLM,
            description=description,
            tags=("deq_transformer", "causal-lm", *tags),
        )
    )


_register(
    "deq-transformer-wt103",
    "DEQ-Transformer at the WikiText-103 scale of the DEQ paper (post-LN, weight norm, tied adaptive input "
    "embedding and adaptive softmax with cutoffs 20k/40k/200k and div_val 4; about 95M parameters)",
    tags=("wikitext-103",),
    vocab_size=WT103_VOCAB_SIZE,
    adaptive_cutoffs=list(WT103_ADAPTIVE_CUTOFFS),
    adaptive_div_val=4,
    hidden_size=700,
    num_attention_heads=10,
    intermediate_size=48000,
    max_position_embeddings=1024,
    norm_position="post",
    weight_norm=True,
    hidden_dropout=0.05,
    embedding_dropout=0.05,
    solver="anderson",
    solver_max_iter=30,
    grad_estimator="upg",
    grad_steps=5,
    grad_damping=0.8,
    grad_solver="broyden",
    grad_max_iter=35,
)

_register(
    "deq-transformer-small",
    "small DEQ-Transformer (hidden 512, 8 heads, 8k vocabulary like the default trained BPE tokenizer; about 7.4M "
    "parameters)",
    vocab_size=8192,
    hidden_size=512,
    num_attention_heads=8,
    intermediate_size=2048,
    max_position_embeddings=1024,
    norm_position="pre",
    hidden_dropout=0.1,
    solver_max_iter=30,
)

_register(
    "deq-transformer-char",
    "character-level CPU demo for tinyshakespeare (hidden 128, 4 heads, about 0.21M parameters)",
    tags=("char",),
    vocab_size=128,
    hidden_size=128,
    num_attention_heads=4,
    intermediate_size=512,
    max_position_embeddings=512,
    norm_position="pre",
    solver_max_iter=20,
    solver_eval_max_iter=30,
    solver_tol=1e-3,
)

_TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    solver_max_iter=15,
    solver_tol=1e-4,
    grad_max_iter=20,
)

_register("test_deq_transformer_tiny", "tiny pre-LN DEQ-Transformer for tests", tags=("test",), **_TINY)
_register(
    "test_deq_transformer_tiny_adaptive",
    "tiny pre-LN DEQ-Transformer with a tied adaptive embedding and softmax (4 clusters of sizes 32/16/8/4), for tests",
    tags=("test",),
    **{**_TINY, "adaptive_cutoffs": [10, 30, 60], "adaptive_div_val": 2},
)
_register(
    "test_deq_transformer_tiny_post",
    "tiny post-LN DEQ-Transformer with weight norm and dropout, for tests",
    tags=("test",),
    **{
        **_TINY,
        "norm_position": "post",
        "weight_norm": True,
        "hidden_dropout": 0.1,
        "embedding_dropout": 0.1,
    },
)
