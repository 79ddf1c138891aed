"""The model's shape as a frozen dataclass, and the checks that make a shape buildable.

Validation returns a list of one-line problems (field, value, what is allowed) instead of raising
on the first, so a user fixes a bad config in one round trip. The attention and feed-forward kinds
come from their registries (modeling/attention_kinds.py, modeling/ffn_kinds.py), precisions from
common/vocabulary.py; nothing here lists them again.
"""

from __future__ import annotations

import dataclasses

from common.validation import at_most, finite, in_range, one_of, positive
from common.vocabulary import PRECISION_COMPUTE_DTYPES, PRECISIONS
from modeling import attention_kinds, ffn_kinds

NORM_KINDS = ("rmsnorm", "layernorm")
POSITION_KINDS = ("rope", "learned", "none")
PRECISION_KINDS = PRECISIONS
REMAT_KINDS = ("none", "full", "dots_saveable")
LAYER_KINDS = ("local", "global")
FEATURE_MAPS = ("elu1", "relu")
ATTENTION_IMPLS = ("auto", "xla", "blocked")
BF16_MATMULS = ("auto", "xla", "f32_result")
WEIGHT_GRADS = ("auto", "xla", "small_transpose")
MATVECS = ("auto", "xla", "split_k")
LAYER_STACKS = ("unrolled", "scan")
# Which linear layers carry a bias: none; qkv = the q/k/v projections only (Qwen2); all = every one (GPT-2).
BIAS_KINDS = {"none": (), "qkv": ("qkv",), "all": ("qkv", "out", "ffn")}
PARAMETERIZATIONS = ("sp", "mup")  # modeling/mup.py, docs/MUP.md

# Each precision's parameter storage dtype and activation dtype, by common.vocabulary's dtype names; the
# dtype its matmuls run in is common.vocabulary.PRECISION_COMPUTE_DTYPES. fp8 quantises matmul operands
# only: activations stay bf16. modeling/precision.py (jax dtypes) and accounting/memory.py (bytes) read these.
PARAM_DTYPES = {"fp32": "fp32", "bf16_mixed": "fp32", "bf16": "bf16", "fp8": "fp32"}
ACTIVATION_DTYPES = {name: "bf16" if dtype == "fp8" else dtype for name, dtype in PRECISION_COMPUTE_DTYPES.items()}

# Upper bounds on the work a config sets, each with its reason: building, tracing and compiling the model
# are O(n_layers) Python and XLA work, and the rest size arrays whose product must fit a machine. Published decoders sit
# far inside them (GPT-3 96 layers, PaLM 118, Llama-3.1-405B 126 layers and d_model 16384, Gemma 3
# vocabulary 262144, Llama 4 Scout 10M context).
LIMITS = {
    "n_layers": (256, "2x the deepest published decoder LLM (Llama-3.1-405B, 126 layers); every layer is built,"
                      " traced and compiled unrolled, ~0.8 s per layer for `isoflop count` on 2 CPU cores"),
    "d_model": (131_072, "8x the widest published decoder (Llama-3.1-405B, 16384)"),
    "n_heads": (4_096, "32x the most heads of a published decoder (128)"),
    "head_dim": (4_096, "16x the widest published head (Gemma, 256)"),
    "d_ff": (1_048_576, "8x the widest published FFN (Llama-3.1-405B, 53248; PaLM, 73728)"),
    "vocab_size": (4_194_304, "16x the largest published vocabulary (Gemma 3, 262144)"),
    "max_seq_len": (1 << 27, "13x the longest published context (Llama 4 Scout, 10M tokens)"),
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3 frequency scaling: long wavelengths are slowed by `factor`, short ones kept."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads (mqa: 1)
    head_dim: int | None = None  # width of one head; None: d_model // n_heads (Gemma decouples them)
    d_ff: int = 512
    max_seq_len: int = 256  # longest context; size of the learned position table
    attention: str = "mha"
    window: int | None = None  # sliding_window: keys each query sees, itself included
    # sliding_window: per-layer "local"/"global", repeated cyclically over the depth; () = all local
    layer_pattern: tuple[str, ...] = ()
    linear_feature_map: str = "elu1"  # linear attention's positive feature map
    linear_chunk_size: int = 64  # linear attention: tokens per chunk of the O(T) chunked scan
    ffn: str = "swiglu"
    norm: str = "rmsnorm"
    norm_bias: bool = False  # layernorm only
    norm_eps: float = 1e-5
    qk_norm: bool = False
    bias: str = "none"  # none | qkv | all (BIAS_KINDS); Python's True/False mean all/none
    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = True
    precision: str = "fp32"
    remat: str = "none"
    init_std: float = 0.02
    # parameterization (modeling/mup.py, docs/MUP.md): "sp" = the init above and one learning rate at every
    # width; "mup" = μP (Yang et al. 2022, Table 8), whose init, per-role Adam learning rates and output and
    # attention multipliers scale with m = d_model / mup_base_width, so that a learning rate tuned at one
    # width transfers to the others (μP at its base width is SP). mup_base_head_dim: the head width at the
    # base, for a family whose head width grows with d_model; None = the head width does not grow (a grid
    # ladder's fixed head_dim), and the attention keeps 1/sqrt(head width).
    parameterization: str = "sp"
    mup_base_width: int | None = None
    mup_base_head_dim: int | None = None
    # Performance knobs (docs/PERFORMANCE.md has the measurements). "auto" picks per backend at trace time.
    # attention_impl (softmax attention kinds): "xla" = jax.nn.dot_product_attention (cuDNN flash attention
    # on GPU, the full T×T XLA composition elsewhere); "blocked" = modeling/causal_attention.py: query
    # blocks see only the keys they can attend to (about half the T×T work) and a hand-written
    # flash-style backward; more, smaller matmuls, so it pays on CPU only. auto: blocked on CPU, else xla;
    # a training on CPU measures xla vs blocked and the block size per host (train/cpu_paths.py).
    attention_impl: str = "auto"
    attention_block_size: int = 64  # blocked: queries per block (smaller skips more masked work, more ops)
    # bf16_matmul (bf16 compute dtypes): "xla" = bf16 operands and bf16 results; "f32_result" = bf16
    # operands with fp32 results, bias add (and the FFN activation) in fp32, one rounding to bf16, and
    # backward matmuls of the same kind (modeling/precision.py). XLA:CPU runs f32-result bf16 dots on
    # native bf16 instructions (AVX512_BF16, AMX) ~2x faster than bf16-result ones and has no bf16
    # arithmetic; accelerators gain nothing and write twice the bytes. auto: f32_result on CPU, else xla;
    # a training on CPU measures xla vs f32_result per host (train/cpu_paths.py).
    bf16_matmul: str = "auto"
    # weight_grad (fp32 dense layers): "xla" = autodiff's weight gradient x^T·g; "small_transpose" = the
    # same sum as (g^T·x)^T when x is the wider operand (modeling/precision.py small_transpose_matmul), so
    # XLA:CPU transposes the smaller one: its copy of a [tokens, d_ff] activation's transpose was a quarter
    # of configs/bench/shape-a.yaml's fp32 step. auto: small_transpose on CPU, else xla.
    weight_grad: str = "auto"
    # matvec (dense layers given one row: a batch-1 decode step): "xla" = one product, which XLA:CPU runs
    # on one thread; "split_k" = the contraction split into one block per core of the CPU device, as one
    # batched product that XLA:CPU spreads over its threads, partial sums added in fp32
    # (modeling/matvec.py): ladder-5's batch-1 decode step 6.5 -> 4.6 ms (medians) on 2 cores. auto: split_k on
    # CPU, else xla.
    matvec: str = "auto"
    # layer_stack: "unrolled" = one traced and compiled copy of every layer (XLA may fuse and schedule
    # across layer boundaries); "scan" = the layers' parameters stacked on a leading "layers" axis and
    # applied by one nnx.scan, so tracing and compilation cost one period of layers whatever the depth,
    # at the price of a loop XLA cannot optimise across. Layers that differ (layer_pattern's local/global,
    # MoE every moe_every-th layer) are scanned as their repeating period, which must divide n_layers
    # (`layer_period`). Parameter paths differ between the two (a checkpoint restores into its own).
    # Measured on XLA:CPU (docs/PERFORMANCE.md, "Depth: scan over layers"): at 48 layers scan compiles
    # 5x faster (28 s less) but steps ~10% slower, a loss after ~150 steps, so there is no auto and
    # unrolled is the default; scan is for compile-bound work (deep models, short runs, tests).
    layer_stack: str = "unrolled"
    # Mixture of experts, read only when ffn=moe (modeling/moe.py, docs/MOE.md): every moe_every-th layer
    # routes each token to moe_top_k of moe_experts experts (each a moe_expert_ffn FFN, d_ff wide) by a
    # fp32 router; moe_shared_experts more see every token; the other layers run one moe_expert_ffn FFN.
    moe_experts: int = 8
    moe_top_k: int = 2
    moe_expert_ffn: str = "swiglu"
    moe_shared_experts: int = 0
    moe_every: int = 1
    moe_score: str = "softmax"  # softmax over all experts (Switch, Mixtral) | sigmoid per expert (DeepSeek-V3)
    moe_renormalize: bool = False  # rescale the k chosen scores to sum to 1 (Mixtral); k=1 then gives 1
    # capacity: each expert takes at most ceil(factor·k·T/E) tokens of a sequence, the rest are dropped;
    # dropless: tokens sorted by expert and a grouped matmul. auto: per backend (MOE_AUTO_DISPATCH).
    moe_dispatch: str = "auto"
    moe_capacity_factor: float = 1.25
    moe_load_balance_weight: float = 0.01  # Switch load-balancing loss (Fedus et al. 2021)
    moe_z_loss_weight: float = 0.001  # router z-loss (Zoph et al. 2022, ST-MoE)

    def __post_init__(self):
        if isinstance(self.bias, bool):  # the old boolean field: biases everywhere or nowhere
            object.__setattr__(self, "bias", "all" if self.bias else "none")

    @property
    def head_size(self) -> int:
        """Width of one attention head as built: model.head_dim, or d_model // n_heads when unset."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually built (resolves the None default per attention kind)."""
        kind = attention_kinds.REGISTRY.lookup(self.attention)
        if kind is not None and kind.fixed_kv_heads is not None:
            return kind.fixed_kv_heads
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def layer_kind(self, layer: int) -> str:
        """'local' (windowed) or 'global' attention for one layer (only windowed kinds have local layers)."""
        kind = attention_kinds.REGISTRY.lookup(self.attention)
        if kind is None or not kind.windowed:
            return "global"
        if not self.layer_pattern:
            return "local"
        return self.layer_pattern[layer % len(self.layer_pattern)]

    def layer_period(self) -> int:
        """The fewest consecutive layers whose attention and FFN kinds repeat through the whole depth."""
        kinds = [(self.layer_kind(layer), ffn_kinds.layer_kind(self, layer)) for layer in range(self.n_layers)]
        return next(p for p in range(1, self.n_layers + 1)
                    if all(kinds[layer] == kinds[layer - p] for layer in range(p, self.n_layers)))

    def scan_repeats(self) -> int | None:
        """How many times layer_stack=scan repeats the layer period; None: unrolled."""
        return None if self.layer_stack == "unrolled" else self.n_layers // self.layer_period()

    def has_bias(self, part: str) -> bool:
        """Whether the `part` ("qkv", "out" or "ffn") linear layers carry a bias under model.bias."""
        return part in BIAS_KINDS.get(self.bias, ())


def _choices(cfg: ModelConfig) -> list[str]:
    problems: list[str] = []
    for field, allowed in (("attention", attention_kinds.names()), ("ffn", ffn_kinds.names()),
                           ("norm", NORM_KINDS), ("position", POSITION_KINDS), ("precision", PRECISION_KINDS),
                           ("remat", REMAT_KINDS), ("linear_feature_map", FEATURE_MAPS),
                           ("attention_impl", ATTENTION_IMPLS), ("bf16_matmul", BF16_MATMULS), ("weight_grad", WEIGHT_GRADS),
                           ("matvec", MATVECS),
                           ("bias", tuple(BIAS_KINDS)), ("layer_stack", LAYER_STACKS),
                           ("parameterization", PARAMETERIZATIONS)):
        problems += one_of(f"model.{field}", getattr(cfg, field), allowed)
    for i, kind in enumerate(cfg.layer_pattern):
        problems += one_of(f"model.layer_pattern[{i}]", kind, LAYER_KINDS)
    return problems


def _sizes(cfg: ModelConfig) -> list[str]:
    """Positive integers within LIMITS; a problem here stops the shape checks that divide by them."""
    problems: list[str] = []
    optional = ("n_kv_heads", "head_dim", "window", "mup_base_width", "mup_base_head_dim")
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "linear_chunk_size",
                  "attention_block_size", *optional):
        value = getattr(cfg, field)
        if value is None and field in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"model.{field}: {value!r} must be a positive integer")
        elif field in LIMITS:
            problems += at_most(f"model.{field}", value, *LIMITS[field])
    return problems


def _floats(cfg: ModelConfig) -> list[str]:
    problems = positive("model.norm_eps", cfg.norm_eps) + positive("model.rope_theta", cfg.rope_theta)
    problems += positive("model.init_std", cfg.init_std)
    return problems + (_rope_scaling(cfg) if cfg.rope_scaling is not None else [])


def _rope_scaling(cfg: ModelConfig) -> list[str]:
    rs = cfg.rope_scaling
    problems = in_range("model.rope_scaling.factor", rs.factor, 1, float("inf"), high_open=True)
    problems += positive("model.rope_scaling.low_freq_factor", rs.low_freq_factor)
    problems += finite("model.rope_scaling.high_freq_factor", rs.high_freq_factor)
    problems += positive("model.rope_scaling.original_max_seq_len", rs.original_max_seq_len)
    if not problems and rs.high_freq_factor <= rs.low_freq_factor:
        problems.append(f"model.rope_scaling.high_freq_factor: {rs.high_freq_factor} must exceed"
                        f" low_freq_factor={rs.low_freq_factor}")
    if cfg.position != "rope":
        problems.append("model.rope_scaling: only used with position=rope")
    return problems


def _heads(cfg: ModelConfig) -> list[str]:
    """Heads dividing widths (needs valid d_model, n_heads, n_kv_heads, head_dim)."""
    problems: list[str] = []
    if cfg.head_dim is None and cfg.d_model % cfg.n_heads:
        problems.append(f"model.n_heads: {cfg.n_heads} does not divide model.d_model={cfg.d_model}"
                        " (or set model.head_dim)")
    elif cfg.position == "rope" and cfg.head_size % 2:
        field = "model.head_dim:" if cfg.head_dim is not None else "model.d_model: head width d_model / n_heads ="
        problems.append(f"{field} {cfg.head_size} must be even for position=rope")
    if cfg.n_kv_heads is not None and cfg.n_heads % cfg.n_kv_heads:
        problems.append(f"model.n_kv_heads: {cfg.n_kv_heads} does not divide model.n_heads={cfg.n_heads}")
    return problems


def _attention_kind(cfg: ModelConfig) -> list[str]:
    """What the attention kind asks of the other fields (needs a registered kind)."""
    problems: list[str] = []
    kind = attention_kinds.get(cfg.attention)
    if kind.fixed_kv_heads is not None and cfg.n_kv_heads not in (None, kind.fixed_kv_heads):
        problems.append(f"model.n_kv_heads: {cfg.n_kv_heads} must be {kind.fixed_kv_heads} (or unset)"
                        f" for attention={cfg.attention}")
    if kind.windowed and cfg.window is None:
        problems.append(f"model.window: required for attention={cfg.attention} (a positive integer)")
    if not kind.windowed:
        windowed = "|".join(name for name, other in attention_kinds.REGISTRY.items() if other.windowed)
        for field in ("window", "layer_pattern"):
            if getattr(cfg, field):
                problems.append(f"model.{field}: only used by attention={windowed} (got attention={cfg.attention})")
    return problems + kind.validate(cfg)


def _parameterization(cfg: ModelConfig) -> list[str]:
    """μP needs its base width; the base fields mean nothing under SP, so setting them there is a mistake."""
    if cfg.parameterization == "mup" and cfg.mup_base_width is None:
        return ["model.mup_base_width: required for parameterization=mup (the d_model at which μP equals SP)"]
    if cfg.parameterization == "sp":
        return [f"model.{field}: only used with parameterization=mup (got sp)"
                for field in ("mup_base_width", "mup_base_head_dim") if getattr(cfg, field) is not None]
    return []


def validate_model(cfg: ModelConfig) -> list[str]:
    """Every problem with a model config, one line each, each starting with `model.` (empty: buildable).

    Checks that relate fields run only when the fields they read passed their own checks, so one bad
    value gives one line, not a cascade."""
    problems = _choices(cfg) + _sizes(cfg) + _floats(cfg) + _parameterization(cfg)
    if cfg.norm_bias and cfg.norm != "layernorm":
        problems.append("model.norm_bias: only layernorm has a bias (set model.norm=layernorm)")
    bad = {problem.split(":")[0].split("[")[0] for problem in problems}
    if not bad & {"model.d_model", "model.n_heads", "model.n_kv_heads", "model.head_dim"}:
        problems += _heads(cfg)
    if not bad & {"model.attention", "model.n_kv_heads", "model.window", "model.layer_pattern"}:
        problems += _attention_kind(cfg)
    if "model.ffn" not in bad:
        problems += ffn_kinds.get(cfg.ffn).validate(cfg)
    if cfg.layer_stack == "scan" and not problems and cfg.n_layers % cfg.layer_period():
        problems.append(f"model.layer_stack: scan repeats a period of {cfg.layer_period()} layers (layer_pattern,"
                        f" moe_every) that does not divide model.n_layers={cfg.n_layers}; use unrolled")
    return problems
