"""Data from a known law, for the recovery tests and the worked example: iso-FLOP grids of (N, D, C, loss)
with multiplicative noise, written as a CSV or as run directories through the run contract (docs/CONTRACTS.md)."""

from __future__ import annotations

import csv
import pathlib
import platform

import numpy as np

from analysis.laws import ChinchillaLaw
from common.files import atomic_write
from common.run_contract import METRICS_FILE, Hardware, ParamCounts, RunSummary, metrics_line, metrics_record, write_summary


def isoflop_grid(law: ChinchillaLaw, budgets, sizes_per_budget: int = 9, span_decades: float = 1.2):
    """(N, D, C) with, at each budget C, model sizes log-spaced over `span_decades` centred on N_opt(C)."""
    rows = []
    for flops in np.asarray(budgets, dtype=float):
        n_opt, _ = law.frontier(flops)
        offsets = np.linspace(-span_decades / 2, span_decades / 2, sizes_per_budget)
        params = n_opt * 10.0**offsets
        rows += [(n, flops / (6 * n), flops) for n in params]
    return tuple(np.array(column) for column in zip(*rows))


def noisy(loss, noise: float, seed: int) -> np.ndarray:
    """loss · exp(ε), ε ~ Normal(0, noise): noise is the standard deviation of log L."""
    return np.asarray(loss) * np.exp(np.random.default_rng(seed).normal(0.0, noise, np.shape(loss)))


def write_csv(path: str | pathlib.Path, columns: dict[str, np.ndarray]) -> pathlib.Path:
    path = pathlib.Path(path)
    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(columns[name] for name in names)):
            writer.writerow([value if isinstance(value, str) else f"{value:.6g}" for value in row])
    return path


SYNTHETIC_SEQ_LEN, SYNTHETIC_BATCH = 1024, 32
SYNTHETIC_FLOPS_PER_SECOND, SYNTHETIC_WATTS = 2e11, 200.0


def run_summary(run_id: str, params: float, tokens: float, loss: float, budget_flops: float, *,
                epochs: float = 1.0, status: str = "completed", mfu: float = 0.3) -> RunSummary:
    """A contract RunSummary for a made-up run of `params` non-embedding parameters on `tokens` tokens.

    FLOP conventions are filled in so that they differ, as they do for real runs: 6N = 6·N·D,
    6N_attn and chinchilla slightly more, compiled a little more again. Time and energy follow from a
    2e11 FLOP/s, 200 W device.
    """
    n, d = round(params), round(tokens)
    per_token = {"6N": 6.0 * n, "6N_attn": 6.0 * n * 1.04, "chinchilla": 6.0 * n * 1.07, "compiled": 6.0 * n * 1.09}
    seconds = 6 * n * d / SYNTHETIC_FLOPS_PER_SECOND
    energy_kwh = seconds * SYNTHETIC_WATTS / 1000 / 3600
    steps = max(1, round(d / (SYNTHETIC_SEQ_LEN * SYNTHETIC_BATCH)))
    return RunSummary(
        run_id=run_id, experiment="synthetic", status=status,
        error=None if status == "completed" else "synthetic failure",
        d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=1024, vocab_size=32000,
        seq_len=SYNTHETIC_SEQ_LEN, batch_size=SYNTHETIC_BATCH, attention="mha", window=None, ffn="swiglu",
        precision="bf16_mixed",
        params=ParamCounts(total=round(n * 1.2), embedding=round(n * 1.2) - n, non_embedding=n, active=round(n * 1.2)),
        flops_per_token=per_token, mfu_flops_per_token=6.0 * n * 1.03,
        budget_convention="6N", budget_flops=float(budget_flops), steps=steps, planned_steps=steps,
        tokens=d, flops={name: value * d for name, value in per_token.items()},
        unique_tokens=round(d / epochs), epochs=float(epochs), data={"source": "synthetic"},
        planned_epochs=float(epochs), final_train_loss=float(loss) * 0.98, final_eval_loss=float(loss),
        wall_seconds=seconds, tokens_per_second=SYNTHETIC_FLOPS_PER_SECOND / (6 * n), mfu=float(mfu),
        peak_memory_bytes=n * 16, energy_kwh=energy_kwh, energy_source="estimated (TDP x time)",
        co2e_kg=energy_kwh * 0.4,
        hardware=Hardware(platform="cpu", device_kind="cpu", accelerator=None, count=1, compute_dtype="bf16",
                          peak_flops_per_second=2.2e11, peak_flops_source="synthetic", tdp_watts=SYNTHETIC_WATTS,
                          tdp_scope="host", tdp_source="synthetic"),
        software={"python": platform.python_version()},
    )


def write_run_dirs(root, params, tokens, loss, budget=None, epochs=None, status=None, curves: bool = True):
    """One `<root>/run<i>/` per row, written through the run contract (summary.json, and a short
    metrics.jsonl), so synthetic run directories are read exactly like real ones."""
    root = pathlib.Path(root)
    rng = np.random.default_rng(0)
    for i, (n, d, value) in enumerate(zip(params, tokens, loss)):
        run_dir = root / f"run{i:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = run_summary(
            f"run{i:03d}", n, d, value, 6 * n * d if budget is None else budget[i],
            epochs=1.0 if epochs is None else float(epochs[i]),
            status="completed" if status is None else status[i], mfu=rng.uniform(0.2, 0.45),
        )
        write_summary(run_dir, summary)
        if curves:
            records = [metrics_record(step, {"tokens": d * step / 10, "train_loss": value * (1 + 2 / step),
                                             "flops_6N": 6 * n * d * step / 10})
                       for step in range(1, 11)]
            atomic_write(run_dir / METRICS_FILE, "".join(metrics_line(record) for record in records))
    return root
