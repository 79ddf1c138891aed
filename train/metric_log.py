"""Per-step metrics to metrics.jsonl and TensorBoard, progress on the terminal, and summary.json.

metrics.jsonl is the record analysis reads: one JSON object per logged step, flushed and fsynced
per line, so a killed run loses at most the line being written. A resumed run first drops the
lines after its checkpoint's step; its file then equals an uninterrupted run's.

TensorBoard tags (tensorboardX event files in the run directory):
    train_loss -> train/loss              eval_loss -> eval/loss
    learning_rate -> train/learning_rate  grad_norm -> train/grad_norm
    tokens_per_second -> perf/tokens_per_second    step_seconds -> perf/step_seconds
    mfu -> perf/mfu                       peak_memory_bytes -> perf/peak_memory_bytes
    energy_kwh -> energy/kwh              co2e_kg -> energy/co2e_kg
    tokens -> progress/tokens             wall_seconds -> progress/wall_seconds
    flops_<convention> -> progress/flops_<convention>   (6N, 6N_attn, chinchilla, compiled)
    any other number -> misc/<key>; a key already holding '/' is used as the tag.
Strings (e.g. energy_source) and nulls go to metrics.jsonl only.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import resource
import sys
import tempfile
import time

from common.formatting import format_count, format_duration

TAGS = {
    "train_loss": "train/loss",
    "eval_loss": "eval/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_second": "perf/tokens_per_second",
    "step_seconds": "perf/step_seconds",
    "mfu": "perf/mfu",
    "peak_memory_bytes": "perf/peak_memory_bytes",
    "energy_kwh": "energy/kwh",
    "co2e_kg": "energy/co2e_kg",
    "tokens": "progress/tokens",
    "wall_seconds": "progress/wall_seconds",
}
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def tag_of(key: str) -> str:
    """The TensorBoard tag of a metric key (see the module docstring)."""
    if "/" in key:
        return key
    if key in TAGS:
        return TAGS[key]
    if key.startswith("flops_"):
        return f"progress/{key}"
    return f"misc/{key}"


def to_json_value(value):
    """Plain JSON data from numpy/jax scalars; NaN/inf become null so the file stays strict JSON."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy / jax scalar or 1-element array
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as JSON")


# ----------------------------------------------------------------------------- progress text


def status_text(metrics: dict, last_eval_loss: float | None) -> str:
    """`loss 2.31 eval 2.40 12.3k tok/s mfu 41%` from whatever of these the step has."""
    parts = []
    if metrics.get("train_loss") is not None:
        parts.append(f"loss {metrics['train_loss']:.4g}")
    if last_eval_loss is not None:
        parts.append(f"eval {last_eval_loss:.4g}")
    if metrics.get("tokens_per_second") is not None:
        parts.append(f"{format_count(metrics['tokens_per_second'])} tok/s")
    if metrics.get("mfu") is not None:
        parts.append(f"mfu {100 * metrics['mfu']:.0f}%")
    return " ".join(parts)


# ----------------------------------------------------------------------------- the log


def _truncate_jsonl(path: pathlib.Path, keep_through_step: int) -> None:
    """Keep lines with step <= keep_through_step (a torn last line from a kill is dropped)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= keep_through_step:
            kept.append(line)
    _write_atomic(path, "".join(f"{line}\n" for line in kept))


class MetricLog:
    """One run's metric sinks. `resume_step`: the step restored from a checkpoint (0 = fresh
    start, which discards any earlier metrics); lines and TensorBoard events after it are dropped."""

    def __init__(self, run_dir, total_steps: int, resume_step: int = 0, *, stream=None, progress_bar=None):
        from tensorboardX import SummaryWriter

        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.path = self.run_dir / METRICS_FILE
        _truncate_jsonl(self.path, resume_step if resume_step > 0 else -1)
        self._file = open(self.path, "a")
        had_events = any(self.run_dir.glob("events.out.tfevents.*"))
        # purge_step hides earlier files' events at steps >= it; unique suffix: tensorboardX names
        # files by the second and would overwrite a file created in the same second.
        self._writer = SummaryWriter(
            logdir=str(self.run_dir),
            purge_step=(resume_step + 1 if resume_step > 0 else 0) if had_events else None,
            filename_suffix=f".{os.getpid()}.{time.time_ns()}",
            flush_secs=30,
        )
        self._stream = stream if stream is not None else sys.stderr
        use_bar = progress_bar if progress_bar is not None else _isatty(self._stream)
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step, file=self._stream, unit="step",
                             dynamic_ncols=True)
        self._first = None  # (step, time) of this session's first log: ETA excludes resumed steps
        self._last_eval_loss = None

    def log(self, step: int, metrics: dict) -> None:
        """Append one line, write the numeric values to TensorBoard, update the progress display."""
        record = {"step": int(step), **{k: to_json_value(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag_of(key), value, global_step=record["step"])
        self._writer.flush()
        if record.get("eval_loss") is not None:
            self._last_eval_loss = record["eval_loss"]
        self._show(record)

    def _show(self, record: dict) -> None:
        step, now = record["step"], time.monotonic()
        text = status_text(record, self._last_eval_loss)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(text, refresh=True)
            return
        if self._first is None:
            self._first = (step, now)
        first_step, first_time = self._first
        eta = None
        if step > first_step:
            eta = (self.total_steps - step) * (now - first_time) / (step - first_step)
        line = f"step {step}/{self.total_steps}" + (f" {text}" if text else "") + f" eta {format_duration(eta)}"
        print(line, file=self._stream, flush=True)

    def message(self, text: str) -> None:
        """A line of text that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._writer.close()
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------- files


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync the directory: readers see the old
    file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_summary(run_dir, summary: dict) -> pathlib.Path:
    """Atomically (re)write run_dir/summary.json; NaN/inf become null."""
    path = pathlib.Path(run_dir) / SUMMARY_FILE
    _write_atomic(path, json.dumps(to_json_value(summary), indent=2, allow_nan=False) + "\n")
    return path


def peak_memory_bytes(device) -> tuple[int | None, str]:
    """(bytes, source): the device allocator's peak where it reports one (GPU/TPU), else this
    process's peak resident set size (CPU runs: host memory of everything in the process)."""
    try:
        stats = device.memory_stats()
    except Exception:
        stats = None
    if stats and stats.get("peak_bytes_in_use") is not None:
        return int(stats["peak_bytes_in_use"]), "device memory_stats peak_bytes_in_use"
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return int(max_rss * scale), "process peak RSS (ru_maxrss)"


__all__ = [
    "MetricLog",
    "TAGS",
    "peak_memory_bytes",
    "status_text",
    "tag_of",
    "to_json_value",
    "write_summary",
]
