"""Per-step metrics to metrics.jsonl and TensorBoard, and progress on the terminal.

metrics.jsonl is the record analysis reads: one JSON object per logged step, flushed and fsynced
per line (common.files.append_line), so a killed run loses at most the line being written. A resumed
run first drops the lines after its checkpoint's step; its file then equals an uninterrupted run's.

The TensorBoard events are derived from metrics.jsonl, never the other way round: they are written
synchronously (no writer thread whose queue a kill could lose, or whose disk-full error would vanish),
and every session rebuilds them — it writes the kept lines into a fresh event file and then deletes
the older files — so a resumed run's curves equal an uninterrupted run's even if a kill lost events.
Any OS error while writing either becomes a one-line `common.files.WriteError`.

TensorBoard tags (tensorboardX event files in the run directory):
    train_loss -> train/loss              eval_loss -> eval/loss
    learning_rate -> train/learning_rate  grad_norm -> train/grad_norm
    tokens_per_second -> perf/tokens_per_second    step_seconds -> perf/step_seconds
    mfu -> perf/mfu                       peak_memory_bytes -> perf/peak_memory_bytes
    energy_kwh -> energy/kwh              co2e_kg -> energy/co2e_kg
    tokens -> progress/tokens             wall_seconds -> progress/wall_seconds
    flops_<convention> -> progress/flops_<convention>   (6N, 6N_attn, chinchilla, compiled)
    aux_loss -> train/aux_loss            moe_<name> -> moe/<name>   (router health, modeling/moe.py)
    any other number -> misc/<key>; a key already holding '/' is used as the tag.
Strings (e.g. energy_source) and nulls go to metrics.jsonl only.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import socket
import sys
import time

from common.files import WriteError, append_line, atomic_write, fsync_dir
from common.formatting import format_count, format_duration
from common.run_contract import EVENTS_GLOB, METRICS_FILE, metrics_line, metrics_record

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
    "aux_loss": "train/aux_loss",
}


def tag_of(key: str) -> str:
    """The TensorBoard tag of a metric key (see the module docstring)."""
    if "/" in key:
        return key
    if key in TAGS:
        return TAGS[key]
    if key.startswith("flops_"):
        return f"progress/{key}"
    if key.startswith("moe_"):  # router health of a mixture of experts (modeling/moe.py)
        return f"moe/{key[len('moe_'):]}"
    return f"misc/{key}"


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


def _kept_lines(path: pathlib.Path, keep_through_step: int) -> list[str]:
    """Lines with step <= keep_through_step (a torn last line from a kill is dropped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= keep_through_step:
            kept.append(line)
    return kept


def _scalars(record: dict):
    """(tag, value) of every number of a metrics record; strings and nulls stay in metrics.jsonl."""
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield tag_of(key), value


class EventFile:
    """One TensorBoard event file written synchronously: each `write` is on disk (fsynced) when it
    returns, and a failure is a WriteError naming the file."""

    def __init__(self, run_dir: pathlib.Path):
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.record_writer import RecordWriter

        self._event = Event
        # Names sort by creation time (TensorBoard reads files in name order); the pid keeps them unique.
        self.path = run_dir / (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                               f"{time.time_ns()}.{os.getpid()}")
        with self._errors():
            self._writer = RecordWriter(str(self.path))
        self._write([Event(wall_time=time.time(), file_version="brain.Event:2")])

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except OSError as err:
            raise WriteError(self.path, err) from None

    def _write(self, events) -> None:
        with self._errors():
            for event in events:
                self._writer.write(event.SerializeToString())
            self._writer.flush()

    def write(self, *records: dict) -> None:
        """The numbers of metrics records, each at its step (one fsync for all of them)."""
        from tensorboardX.summary import scalar

        now = time.time()
        self._write([self._event(wall_time=now, step=record["step"], summary=scalar(tag, value))
                     for record in records for tag, value in _scalars(record)])

    def close(self) -> None:
        with self._errors():
            self._writer.close()


class MetricLog:
    """One run's metric sinks. `resume_step`: the step restored from a checkpoint (0 = fresh
    start, which discards any earlier metrics); lines and TensorBoard events after it are dropped."""

    def __init__(self, run_dir, total_steps: int, resume_step: int = 0, *, stream=None, progress_bar=None):
        self.run_dir = pathlib.Path(run_dir)
        self.total_steps = total_steps
        self.path = self.run_dir / METRICS_FILE
        kept = _kept_lines(self.path, resume_step if resume_step > 0 else -1)
        if kept or self.path.exists():
            atomic_write(self.path, "".join(f"{line}\n" for line in kept))
        try:
            self._file = open(self.path, "a")
        except OSError as err:
            raise WriteError(self.path, err) from None
        records = [json.loads(line) for line in kept]
        self._events = self._rebuild_events(records)
        # The latest value of every field logged before the resumed step (a run resumed at its end has
        # nothing left to log, and its summary still needs its final losses).
        self.resumed_metrics = {k: v for record in records for k, v in record.items() if k != "step"}
        self._stream = stream if stream is not None else sys.stderr
        use_bar = progress_bar if progress_bar is not None else _isatty(self._stream)
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=resume_step, file=self._stream, unit="step",
                             dynamic_ncols=True)
        self._first = None  # (step, time) of this session's first log: ETA excludes resumed steps
        self._last_eval_loss = next((r["eval_loss"] for r in reversed(records) if r.get("eval_loss") is not None),
                                    None)

    def _rebuild_events(self, records: list[dict]) -> EventFile:
        """A new event file holding `records`, then the older files deleted (see the module docstring)."""
        older = sorted(self.run_dir.glob(EVENTS_GLOB))
        events = EventFile(self.run_dir)
        events.write(*records)
        for path in older:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                raise WriteError(path, err) from None
        fsync_dir(self.run_dir)
        return events

    def log(self, step: int, metrics: dict) -> None:
        """Append one line, write the numeric values to TensorBoard, update the progress display."""
        record = metrics_record(step, metrics)
        append_line(self._file, metrics_line(record), self.path)
        self._events.write(record)
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
        self._events.close()
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as err:
                raise WriteError(self.path, err) from None

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
    "EventFile",
    "MetricLog",
    "TAGS",
    "peak_memory_bytes",
    "status_text",
    "tag_of",
]
