"""The architecture-conditional scaling law of Bian et al. 2025 ("Scaling Laws Meet Model Architecture:
Toward Inference-Efficient LLMs", arXiv 2510.18245), its fit, and the search it was made for.

The paper (eq. 3, multiplicative calibration) conditions Chinchilla's L(N, D) on the hidden size through
x = d/√N (N non-embedding) and on the MLP-to-attention parameter ratio r, by separable U-shaped factors:

    L(x, r | N, D) = (a0 + a1·ln x + a2/x) · (b0 + b1·ln r + b2/r) · L_opt(N, D)

Fitted jointly with E, A, B of L_opt, the scale of each factor trades exactly against E, A and B, so it
is written here divided by its minimum, which identifies every parameter (docs/ANALYSIS-CONDITIONAL.md):

    L = (E + A/N^α + B/D^β) · (1 + c_w·h(ln(x/x*))) · (1 + c_r·h(ln(r/r*))),   h(u) = u + e^-u - 1

with x* = a2/a1, c_w = a1/(a0 + a1·ln x* + a1), and likewise for r. GQA is not a term of the law: it
enters the search, which picks n_kv_heads locally for throughput. It is fitted as approach 3 is
(analysis/robust.py: summed Huber δ=1e-3 on log L, L-BFGS from screened starts), all nine parameters at
once, where the paper fixes L_opt first and fits the factors by least squares.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np

from analysis import chinchilla
from analysis.errors import AnalysisError
from analysis.law_files import described_conventions, read_fit_json
from analysis.laws import ChinchillaLaw
from analysis.robust import OBJECTIVES, Objective, fit_log_model, grid, log_sum_exp_terms
from analysis.sources import Dataset
from common.run_contract import SUMMARY_FILE, ContractError, read_summary

PAPER = "Bian et al. 2025 (arXiv 2510.18245)"
ARCH_COLUMNS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")
FFN_MATRICES = {"swiglu": 3, "geglu": 3, "gelu": 2, "relu2": 2}  # d×d_ff weight matrices (modeling/ffn_kinds.py)
NAMES = ("E", "A", "B", "alpha", "beta", "c_width", "width_opt", "c_ratio", "ratio_opt")
MIN_POINTS = 12  # nine parameters; a few more points than that before a fit means anything
MIN_DISTINCT = 3  # a U-shape needs three distinct values of x and of r
HELD_OUT_FOLDS = 5
CHINCHILLA_STARTS_KEPT = 8  # Hoffmann starts (screened without the corrections) each combined with the shape grid


# ------------------------------------------------------------------------------------------ architecture


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A dense decoder's shape; parameter counts are the weight matrices (norms and biases left out)."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    ffn: str = "swiglu"

    @property
    def head_dim(self) -> float:
        return self.d_model / self.n_heads

    @property
    def attention_params(self) -> float:
        """Per layer: W_q and W_o (d × h·hd each), W_k and W_v (d × kv·hd each)."""
        return 2 * self.d_model**2 + 2 * self.d_model * self.n_kv_heads * self.head_dim

    @property
    def mlp_params(self) -> float:
        return FFN_MATRICES[self.ffn] * self.d_model * self.d_ff

    @property
    def ratio(self) -> float:
        """r, the MLP-to-attention parameter ratio."""
        return self.mlp_params / self.attention_params

    @property
    def params(self) -> float:
        """Non-embedding parameters N."""
        return self.n_layers * (self.attention_params + self.mlp_params)

    @property
    def kv_elements_per_token(self) -> float:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "params": self.params, "ratio": self.ratio,
                "width_ratio": self.d_model / math.sqrt(self.params)}


def architecture_columns(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(x = d/√N, r) of every row; a missing column or an unknown FFN is one line."""
    missing = [name for name in ARCH_COLUMNS if not np.all(np.isfinite(data.extra(name)))]
    ffn = data.extras.get("ffn", data.cells.get("ffn"))
    if ffn is None:
        missing.append("ffn")
    if missing:
        raise AnalysisError(f"the conditional law needs {', '.join(missing)} for every run (summary.json fields, "
                            "or CSV columns of those names)")
    unknown = sorted(set(str(kind) for kind in ffn) - set(FFN_MATRICES))
    if unknown:
        raise AnalysisError(f"the conditional law covers dense FFNs ({', '.join(FFN_MATRICES)}); got {', '.join(unknown)}")
    archs = [Architecture(*(int(data.extra(name)[i]) for name in ARCH_COLUMNS), ffn=str(ffn[i])) for i in range(len(data))]
    width = np.array([arch.d_model for arch in archs]) / np.sqrt(data.params)
    return width, np.array([arch.ratio for arch in archs])


# -------------------------------------------------------------------------------------------------- law


@dataclasses.dataclass(frozen=True)
class ConditionalLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    c_width: float
    width_opt: float
    c_ratio: float
    ratio_opt: float

    def base(self, n, d):
        """Chinchilla's L(N, D), at the optimal architecture."""
        return self.E + self.A / np.asarray(n, dtype=float) ** self.alpha + self.B / np.asarray(d, dtype=float) ** self.beta

    def correction(self, width, ratio):
        """The architecture's factor, 1 at (x*, r*)."""
        u, v = np.log(np.asarray(width, float) / self.width_opt), np.log(np.asarray(ratio, float) / self.ratio_opt)
        return (1 + self.c_width * excess(u)) * (1 + self.c_ratio * excess(v))

    def loss(self, n, d, width, ratio):
        return self.base(n, d) * self.correction(width, ratio)

    def at_shape(self, width, ratio) -> ChinchillaLaw:
        """L(N, D) of models of one shape (x, r): Chinchilla's law with E, A and B scaled by its factor."""
        k = float(self.correction(width, ratio))
        return ChinchillaLaw(E=k * self.E, A=k * self.A, B=k * self.B, alpha=self.alpha, beta=self.beta)

    def as_dict(self) -> dict:
        return {name: float(getattr(self, name)) for name in NAMES}


def _law_of(theta) -> ConditionalLaw:
    log_a, log_b, log_e, alpha, beta, log_cw, log_w, log_cr, log_r = theta
    return ConditionalLaw(E=np.exp(log_e), A=np.exp(log_a), B=np.exp(log_b), alpha=alpha, beta=beta,
                          c_width=np.exp(log_cw), width_opt=np.exp(log_w), c_ratio=np.exp(log_cr), ratio_opt=np.exp(log_r))


def _theta_of(law: ConditionalLaw) -> np.ndarray:
    tiny = np.finfo(float).tiny
    return np.array([np.log(max(law.A, tiny)), np.log(max(law.B, tiny)), np.log(max(law.E, tiny)), law.alpha, law.beta,
                     np.log(max(law.c_width, tiny)), np.log(law.width_opt), np.log(max(law.c_ratio, tiny)),
                     np.log(law.ratio_opt)])


def excess(u):
    """h(u) = u + e^-u - 1 at u = ln(x/x*): the paper's c0 + c1·ln x + c2/x less its minimum, per unit c1
    (x* = c2/c1). Zero at x*, ≈ u²/2 near it; grows like ln x above it and like 1/x below."""
    u = np.asarray(u, dtype=float)
    return u + np.expm1(-u)


def _u_shape(log_c, centre, log_x):
    """log(1 + c·h(ln x - centre)) and its derivatives in log c and in the centre."""
    u = log_x - centre
    c = np.exp(log_c)
    ch = c * excess(u)
    return np.log1p(ch), ch / (1 + ch), c * np.expm1(-u) / (1 + ch)


def conditional_model(log_n, log_d, log_w, log_r, log_loss):
    """(residuals, residuals_many) of log L̂ - log L for the Huber fitter (theta: see `_theta_of`)."""

    def predict(theta):
        base, weights = log_sum_exp_terms(chinchilla._approach3_terms(theta[..., :5], log_n, log_d))
        width = _u_shape(theta[..., 5, None], theta[..., 6, None], log_w)
        ratio = _u_shape(theta[..., 7, None], theta[..., 8, None], log_r)
        return base + width[0] + ratio[0], weights, width, ratio

    def residuals(theta):
        predicted, weights, width, ratio = predict(theta)
        jac = np.column_stack([weights[:, 0], weights[:, 1], weights[:, 2], -weights[:, 0] * log_n,
                               -weights[:, 1] * log_d, width[1], width[2], ratio[1], ratio[2]])
        return predicted - log_loss, jac

    return residuals, lambda thetas: predict(thetas)[0] - log_loss


def _starts(log_n, log_d, log_w, log_r, log_loss) -> np.ndarray:
    """Hoffmann's starts screened on L(N, D) alone, each crossed with a grid of shapes about the data's x and r."""
    _, screen = chinchilla.approach3_model(log_n, log_d, log_loss)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        initial = np.nan_to_num((screen(chinchilla.HOFFMANN_STARTS) ** 2).sum(axis=1), nan=np.inf)
    kept = chinchilla.HOFFMANN_STARTS[np.argsort(initial, kind="stable")[:CHINCHILLA_STARTS_KEPT]]
    shapes = grid(np.log([0.03, 0.3]), np.quantile(log_w, [0.25, 0.5, 0.75]),
                  np.log([0.03, 0.3]), np.quantile(log_r, [0.25, 0.5, 0.75]))
    return np.hstack([np.repeat(kept, len(shapes), axis=0), np.tile(shapes, (len(kept), 1))])


def fit_law(params, tokens, width, ratio, loss, starts=None, n_best: int | None = None,
            objective: Objective = OBJECTIVES["huber-log"]) -> tuple[ConditionalLaw, float]:
    """The conditional law fitted on raw arrays, and the objective's value there."""
    logs = [np.log(np.asarray(column, dtype=float)) for column in (params, tokens, width, ratio, loss)]
    if starts is None:
        starts = _starts(*logs)
    residuals, many = conditional_model(*logs)
    fit = fit_log_model(residuals, logs[-1], starts, objective, many, n_best)
    return _law_of(fit.theta), fit.objective


def varied_architecture(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(x, r) of the rows, if every run has its architecture and they vary it; else one line why not."""
    width, ratio = architecture_columns(data)
    for what, values in (("d/√N (hidden size at fixed N)", width), ("r (MLP-to-attention ratio)", ratio)):
        distinct = len(np.unique(np.round(values, 6)))
        if distinct < MIN_DISTINCT:
            raise AnalysisError(f"the conditional law needs the runs to vary {what} over at least {MIN_DISTINCT} "
                                f"values (got {distinct}): the data do not vary the architecture")
    return width, ratio


def applies(data: Dataset) -> bool:
    """Whether a report should fit the law: the runs record and vary their architecture."""
    try:
        varied_architecture(data)
    except AnalysisError:
        return False
    return True


def check_data(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(x, r) of the rows, after the checks that say in one line why the data cannot fit this law."""
    width, ratio = varied_architecture(data)
    chinchilla.require_points(data.params, data.tokens, MIN_POINTS, "the conditional law")
    return width, ratio


def held_out_error(data: Dataset, width, ratio, law: ConditionalLaw, objective: Objective,
                   folds: int = HELD_OUT_FOLDS, seed: int = 0) -> dict:
    """Leave-some-out: each of `folds` random parts of the runs predicted by a fit to the others."""
    order = np.random.default_rng(seed).permutation(len(data))
    errors = np.full(len(data), np.nan)
    for part in np.array_split(order, folds):
        keep = np.setdiff1d(order, part)
        refit, _ = fit_law(data.params[keep], data.tokens[keep], width[keep], ratio[keep], data.loss[keep],
                           starts=_theta_of(law)[None], objective=objective)
        predicted = refit.loss(data.params[part], data.tokens[part], width[part], ratio[part])
        errors[part] = predicted / data.loss[part] - 1
    return {"folds": folds, "seed": seed, "rmse_relative": float(np.sqrt(np.mean(errors**2))),
            "max_abs_relative": float(np.max(np.abs(errors))),
            "per_run": {str(run): float(error) for run, error in zip(data.run_ids, errors)}}


def fit_conditional(data: Dataset, starts=None, n_best: int | None = None,
                    objective: Objective = OBJECTIVES["huber-log"], held_out: bool = True) -> dict:
    """The point fit (with held-out error and the search at the data's largest run) or a bootstrap refit."""
    width, ratio = check_data(data)
    law, value = fit_law(data.params, data.tokens, width, ratio, data.loss, starts, n_best, objective)
    if not law.alpha + law.beta > 0:
        raise AnalysisError("conditional fit is degenerate (alpha + beta <= 0): the data do not constrain L(N, D)")
    out = {**law.as_dict(), "objective": value}
    if held_out:
        at = search_point(data)
        space = SearchSpace(head_dim=runs_head_dim(data))
        out["details"] = {"held_out": held_out_error(data, width, ratio, law, objective),
                          "search": search_report(law, float(data.params[at]), float(data.tokens[at]), space)}
    return out


def search_point(data: Dataset) -> int:
    """The row the search is made at: the largest model of the largest budget (in an isoFLOP grid, budgets tie
    on FLOPs; the largest model is the one furthest from the toy end)."""
    top = data.budget == data.budget[int(np.argmax(data.flops))]
    return int(np.flatnonzero(top)[np.argmax(data.params[top])])


def runs_head_dim(data: Dataset) -> int:
    """The head width the runs use (the most common d_model / n_heads), so candidates are built as the runs
    were: a default of 64 leaves no whole layer in a 100k-parameter model."""
    dims = np.round(data.extras["d_model"] / data.extras["n_heads"])
    values, counts = np.unique(dims[np.isfinite(dims)], return_counts=True)
    return int(values[np.argmax(counts)]) if len(values) else SearchSpace.head_dim


def law_from(estimates: dict) -> ConditionalLaw:
    return ConditionalLaw(**{name: float(estimates[name]) for name in NAMES})


def warm_start(estimates: dict) -> np.ndarray:
    return _theta_of(law_from(estimates))[None]


def read_law(path: str) -> tuple[ConditionalLaw, str]:
    """(law, where it came from) from `isoflop fit --approach conditional --json` or a report's fits.json;
    one line when the file is not there, not JSON, or holds no conditional law."""
    expected = "`isoflop fit RUNS --approach conditional --json`, or a report's fits.json"
    fitted = read_fit_json(path, expected)
    if isinstance(fitted.get("fits"), dict):  # a report's fits.json
        if not isinstance(fitted["fits"].get("conditional"), dict):
            raise AnalysisError(f"--law {path}: the report has no conditional fit (see its 'skipped': the runs may "
                                "not vary the architecture)")
        fitted = fitted["fits"]["conditional"]
    missing = [name for name in NAMES if isinstance(fitted.get(name), bool)
               or not isinstance(fitted.get(name), (int, float)) or not math.isfinite(fitted[name])]
    if missing:
        raise AnalysisError(f"--law {path}: not an architecture-conditional law: no finite {', '.join(missing)} "
                            f"(expected {expected})")
    law = law_from(fitted)
    wrong = [name for name in NAMES if getattr(law, name) < 0 or (getattr(law, name) == 0 and not name.startswith("c_"))]
    if wrong:
        raise AnalysisError(f"--law {path}: {', '.join(wrong)} must be positive (curvatures >= 0)")
    return law, f"{path} (conventions: {described_conventions(fitted)})"


# ------------------------------------------------------------------------------------------- throughput


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Seconds of one device. Decoding: one step moves every weight and the batch's KV cache through
    memory and does 2 FLOPs per weight and per cached key/value element for each sequence; it takes the
    longer of the two at the device's bandwidth and peak (a roofline), divided by the fraction of that
    bound the serving stack achieves. Training is compute-bound: 6·N·D FLOPs (the count C = 6·N·D of the
    laws' budgets) at a sustained rate. The defaults are a nominal accelerator training at 40% MFU and
    decoding at the bound; only ratios are meant to be read from them (`measured_cost_model` for a real one)."""

    batch: int = 64
    context: int = 2048
    bytes_per_element: float = 2.0
    bandwidth: float = 1e12  # bytes/s
    peak_flops: float = 1e14
    decode_efficiency: float = 1.0  # achieved fraction of the roofline bound
    train_flops_per_second: float = 0.4e14  # 6N-counted training FLOP/s one device sustains

    def tokens_per_second(self, arch: Architecture) -> float:
        kv = self.batch * self.context * arch.kv_elements_per_token
        moved = self.bytes_per_element * (arch.params + kv)
        flops = 2 * self.batch * arch.params + 2 * self.batch * self.context * arch.n_layers * 2 * arch.d_model
        return self.decode_efficiency * self.batch / max(moved / self.bandwidth, flops / self.peak_flops)

    def train_seconds(self, params: float, tokens: float) -> float:
        return 6 * params * tokens / self.train_flops_per_second

    def inference_seconds(self, arch: Architecture, tokens: float) -> float:
        """Decoding `tokens` tokens (prefill is not counted)."""
        return tokens / self.tokens_per_second(arch)


def measured_cost_model(root, batch: int = CostModel.batch, context: int = CostModel.context) -> tuple[CostModel, str]:
    """The cost model of the device the runs under `root` ran on, and what it was measured from: bandwidth
    and peak as `isoflop bench infer` recorded them, decoding at the median fraction of the bandwidth bound
    its steps achieved (`bandwidth_bound_fraction`, a property of device and software that carries over to
    other shapes), training at the median 6N-counted FLOP/s per device the completed runs sustained."""
    summaries = []
    for path in sorted(pathlib.Path(root).rglob(SUMMARY_FILE)):
        try:
            summaries.append(read_summary(path.parent))
        except ContractError as err:
            raise AnalysisError(str(err)) from None
    if not summaries:
        raise AnalysisError(f"--measured {root}: no {SUMMARY_FILE} found")
    benches = [summary.inference for summary in summaries if isinstance(summary.inference, dict)]
    fractions = [row["bandwidth_bound_fraction"] for bench in benches for row in bench.get("results") or []
                 if isinstance(row, dict) and _positive(row.get("bandwidth_bound_fraction"))]
    if not fractions:
        raise AnalysisError(f"--measured {root}: no run has `isoflop bench infer` results with a bandwidth-bound "
                            "fraction (bench a run with `isoflop bench infer RUN_DIR` on a device of known bandwidth)")
    trained = [summary for summary in summaries if summary.status == "completed" and _positive(summary.tokens_per_second)]
    if not trained:
        raise AnalysisError(f"--measured {root}: no completed run records its training tokens/s")
    kinds = sorted({str(bench.get("device_kind")) for bench in benches} | {s.hardware.device_kind for s in trained})
    if len(kinds) > 1:
        raise AnalysisError(f"--measured {root}: measured on {', '.join(kinds)}; a total in device-seconds needs "
                            "one kind of device (point --measured at the runs of one)")
    device = {}
    for key in ("memory_bandwidth_bytes_per_second", "peak_flops_per_second"):
        values = [bench[key] for bench in benches if _positive(bench.get(key))]
        if not values:
            raise AnalysisError(f"--measured {root}: no `bench infer` result records {key}")
        device[key] = float(np.median(values))
    rates = [6 * s.params.non_embedding * s.tokens_per_second / s.hardware.count for s in trained]
    cost = CostModel(batch=batch, context=context, bandwidth=device["memory_bandwidth_bytes_per_second"],
                     peak_flops=device["peak_flops_per_second"], decode_efficiency=float(np.median(fractions)),
                     train_flops_per_second=float(np.median(rates)))
    return cost, (f"measured on {kinds[0]}: decoding at {cost.decode_efficiency:.2f} of the bandwidth bound (median of "
                  f"{len(fractions)} `bench infer` rows, {min(fractions):.2f}-{max(fractions):.2f}); training at "
                  f"{cost.train_flops_per_second:.3g} FLOP/s (6N-counted, non-embedding N; median of {len(trained)} "
                  "runs per device)")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


# --------------------------------------------------------------------------------------------- search

LLAMA_RATIO = 5.0  # LLaMA-3.2 1B: 3·2048·8192 / (2·2048² + 2·2048·512) = 4.8
LLAMA_HEADS_PER_KV = 4  # LLaMA-3.2: 32 query heads, 8 KV heads
LLAMA_WIDTH_RATIO = 0.065  # LLaMA-3.2 1B: 2048 / √(0.97e9 non-embedding parameters)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    head_dim: int = 64
    widths: tuple[float, ...] = tuple(np.round(np.geomspace(0.02, 0.4, 15), 4))  # d/√N
    ratios: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
    heads_per_kv: int = LLAMA_HEADS_PER_KV  # the first stage's GQA, before the local search
    ffn: str = "swiglu"
    top: int = 3  # first-stage candidates the GQA search starts from
    params_tolerance: float = 0.1  # whole layers: a candidate's N may miss the asked-for N by this fraction
    max_heads_per_kv: int | None = None  # the GQA search's cap on query heads per KV head (None: up to MQA)


@dataclasses.dataclass(frozen=True)
class Candidate:
    arch: Architecture
    loss: float
    tokens_per_second: float

    def as_dict(self) -> dict:
        return {"architecture": self.arch.as_dict(), "loss": self.loss, "tokens_per_second": self.tokens_per_second}


def kv_choices(n_heads: int, space: SearchSpace) -> list[int]:
    """The n_kv_heads the local GQA search tries: divisors of n_heads, at most `max_heads_per_kv` query
    heads each (the law has no GQA term, so without a cap throughput alone decides)."""
    cap = space.max_heads_per_kv or n_heads
    small = [k for k in range(1, math.isqrt(n_heads) + 1) if n_heads % k == 0]
    divisors = sorted(set(small + [n_heads // k for k in small]))
    return [kv for kv in divisors if n_heads // kv <= cap]


def kv_for(n_heads: int, heads_per_kv: float, space: SearchSpace) -> int:
    """The n_kv_heads of `kv_choices` nearest n_heads / heads_per_kv (the standard GQA of a width)."""
    return min(kv_choices(n_heads, space), key=lambda k: (abs(k - n_heads / heads_per_kv), -k))  # a tie: more KV heads


def layer_of(d_model: int, ratio: float, n_kv_heads: int, space: SearchSpace) -> Architecture:
    """One layer of this width, r (d_ff rounded to a whole number) and KV heads."""
    probe = Architecture(d_model, 1, d_model // space.head_dim, n_kv_heads, 1, space.ffn)
    d_ff = max(1, round(ratio * probe.attention_params / (FFN_MATRICES[space.ffn] * d_model)))
    return dataclasses.replace(probe, d_ff=d_ff)


def build(params: float, d_model: int, ratio: float, n_kv_heads: int, space: SearchSpace) -> Architecture | None:
    """The architecture of about `params` non-embedding parameters with this width, r and KV heads."""
    return _with_layers(layer_of(d_model, ratio, n_kv_heads, space), params, space)


def _with_layers(layer: Architecture, params: float, space: SearchSpace) -> Architecture | None:
    """`layer` stacked to about `params`; None when whole layers cannot come within the tolerance."""
    arch = dataclasses.replace(layer, n_layers=max(1, round(params / layer.params)))
    return arch if abs(arch.params / params - 1) <= space.params_tolerance else None


def _candidate(law, tokens, arch, cost) -> Candidate:
    loss = float(law.loss(arch.params, tokens, arch.d_model / math.sqrt(arch.params), arch.ratio))
    return Candidate(arch, loss, cost.tokens_per_second(arch))


def grid_candidates(law, params, tokens, space: SearchSpace, cost: CostModel) -> list[Candidate]:
    """First stage: every width and r of the space at its standard GQA."""
    widths = sorted({max(1, round(w * math.sqrt(params) / space.head_dim)) * space.head_dim for w in space.widths})
    out = []
    for d_model in widths:
        kv = kv_for(d_model // space.head_dim, space.heads_per_kv, space)
        for ratio in space.ratios:
            arch = build(params, d_model, ratio, kv, space)
            if arch is not None:
                out.append(_candidate(law, tokens, arch, cost))
    return out


def gqa_neighbours(law, params, tokens, start: Candidate, space: SearchSpace, cost: CostModel) -> list[Candidate]:
    """Second stage: the same width and r (so the law's prediction barely moves) with every n_kv_heads
    of `kv_choices`; d_ff and the layers follow."""
    archs = [build(params, start.arch.d_model, start.arch.ratio, kv, space)
             for kv in kv_choices(start.arch.n_heads, space)]
    return [_candidate(law, tokens, arch, cost) for arch in archs if arch is not None]


def baseline(law, params, tokens, space: SearchSpace, cost: CostModel) -> Candidate:
    """A LLaMA-style model of this size: d/√N as LLaMA-3.2 1B, r = 5, four query heads per KV head."""
    d_model = max(1, round(LLAMA_WIDTH_RATIO * math.sqrt(params) / space.head_dim)) * space.head_dim
    kv = kv_for(d_model // space.head_dim, LLAMA_HEADS_PER_KV, space)
    arch = build(params, d_model, LLAMA_RATIO, kv, space)
    if arch is None:
        raise AnalysisError(f"N = {params:.3g} is too small for a LLaMA-style layer of width {d_model}")
    return _candidate(law, tokens, arch, cost)


def search(law: ConditionalLaw, params: float, tokens: float, target_loss: float,
           space: SearchSpace = SearchSpace(), cost: CostModel = CostModel()) -> tuple[Candidate, list[Candidate]]:
    """(the highest-throughput architecture whose predicted loss is <= target, every candidate looked at).

    Stage one scans width and r at standard GQA; stage two searches n_kv_heads around the `top` fastest
    feasible ones (the paper's local search over GQA)."""
    first = grid_candidates(law, params, tokens, space, cost)
    feasible = sorted((c for c in first if c.loss <= target_loss), key=lambda c: -c.tokens_per_second)
    if not feasible:
        best = min(first, key=lambda c: c.loss)
        raise AnalysisError(f"no architecture of N = {params:.3g} reaches loss {target_loss:.4f} "
                            f"(the lowest predicted is {best.loss:.4f})")
    second = [c for start in feasible[:space.top] for c in gqa_neighbours(law, params, tokens, start, space, cost)]
    best = max((c for c in feasible + second if c.loss <= target_loss), key=lambda c: c.tokens_per_second)
    return best, first + second


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both loss (lower) and throughput (higher), by increasing loss."""
    front, fastest = [], -math.inf
    for c in sorted(candidates, key=lambda c: (c.loss, -c.tokens_per_second)):
        if c.tokens_per_second > fastest:
            front.append(c)
            fastest = c.tokens_per_second
    return front


def search_report(law: ConditionalLaw, params: float, tokens: float, space: SearchSpace = SearchSpace(),
                  cost: CostModel = CostModel()) -> dict:
    """The search at (N, D) with the LLaMA-style baseline's predicted loss as the target."""
    base = baseline(law, params, tokens, space, cost)
    best, candidates = search(law, params, tokens, base.loss, space, cost)
    return {"params": params, "tokens": tokens, "target_loss": base.loss, "baseline": base.as_dict(),
            "best": best.as_dict(), "throughput_gain": best.tokens_per_second / base.tokens_per_second - 1,
            "cost_model": dataclasses.asdict(cost),
            "pareto": [c.as_dict() for c in pareto_front(candidates)]}


# ---------------------------------------------------------------------------------------------- figure


def pareto_plot(report: dict, path, measured: list[tuple[float, float]] = ()):
    """Predicted loss against modelled throughput of the search's Pareto front, the LLaMA-style baseline
    and the chosen architecture; `measured` adds (loss, decode tokens/s) of runs benchmarked."""
    from analysis import plots  # matplotlib only when a figure is drawn

    fig, (ax,) = plots._figure()
    front = report["pareto"]
    ax.plot([c["tokens_per_second"] for c in front], [c["loss"] for c in front], "o-", ms=3, label="Pareto front (modelled)")
    for key, marker, label in (("baseline", "s", "LLaMA-style (r≈5, GQA 4:1)"), ("best", "*", "search's choice")):
        ax.plot(report[key]["tokens_per_second"], report[key]["loss"], marker, ms=12, label=label)
    if measured:  # another device than the cost model's: its own axis
        loss, speed = zip(*measured)
        top = ax.twiny()
        top.plot(speed, loss, "kx", label="runs (measured)")
        top.set_xscale("log")
        top.set_xlabel("measured decode tokens/s of the runs (x)")
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s")
    ax.set_ylabel("predicted loss")
    ax.set_title(f"N = {report['params']:.3g}, D = {report['tokens']:.3g}")
    ax.legend(fontsize=8)
    return plots._save(fig, path)


def measured_points(data: Dataset) -> list[tuple[float, float]]:
    """(loss, best decode tokens/s) of the runs whose summary has `bench infer` results."""
    speed = data.extra("decode_tokens_per_second")
    return [(float(loss), float(value)) for loss, value in zip(data.loss, speed) if np.isfinite(value)]
