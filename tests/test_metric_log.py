"""metrics.jsonl + TensorBoard round trip, resume truncation, progress text (summary.json: test_contract.py)."""

import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common import formatting
from train import metric_log
from common.run_contract import to_json_value
from train.metric_log import MetricLog, peak_memory_bytes, tag_of


def step_metrics(step, offset=0.0):
    return {
        "train_loss": 5.0 - 0.5 * step + offset,
        "learning_rate": np.float32(1e-3 * step),
        "grad_norm": jnp.asarray(0.25 * step),
        "tokens_per_second": 12_345.0,
        "step_seconds": 0.5,
        "mfu": 0.41,
        "peak_memory_bytes": 2**20,
        "energy_kwh": 1e-6 * step,
        "energy_source": "estimate: 1 × 7.8 W TDP × PUE 1.1",
        "co2e_kg": 4.75e-7 * step,
        "tokens": 1024 * step,
        "flops_6N": 6e9 * step,
        "flops_chinchilla": 7e9 * step,
        **({"eval_loss": 4.5 - 0.5 * step} if step % 2 == 0 else {}),
    }


def read_jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_jsonl_and_tensorboard_round_trip(tmp_path):
    stream = io.StringIO()
    with MetricLog(tmp_path, total_steps=10, stream=stream) as log:
        for step in (1, 2, 3):
            log.log(step, step_metrics(step))
    records = read_jsonl(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["eval_loss"] == 3.5 and "eval_loss" not in records[0]
    assert records[2]["grad_norm"] == 0.75 and isinstance(records[2]["learning_rate"], float)
    assert records[0]["energy_source"].startswith("estimate")

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    expected_tags = {"train/loss", "eval/loss", "train/learning_rate", "train/grad_norm", "perf/tokens_per_second",
                     "perf/step_seconds", "perf/mfu", "perf/peak_memory_bytes", "energy/kwh", "energy/co2e_kg",
                     "progress/tokens", "progress/flops_6N", "progress/flops_chinchilla"}
    assert set(events.Tags()["scalars"]) == expected_tags
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 4.5), (2, 4.0), (3, 3.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(2, 3.5)]
    assert events.Scalars("progress/tokens")[-1].value == 3072

    lines = stream.getvalue().splitlines()
    assert lines[0] == "step 1/10 loss 4.5 12.3k tok/s mfu 41% eta ?"
    assert lines[2].startswith("step 3/10 loss 3.5 eval 3.5 12.3k tok/s mfu 41% eta ")
    assert not lines[2].endswith("eta ?")


def test_resume_truncates_to_the_checkpoint_step(tmp_path):
    log = MetricLog(tmp_path, total_steps=6, stream=io.StringIO())
    for step in range(1, 6):
        log.log(step, step_metrics(step))
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train_lo')  # the line a SIGKILL tore

    with MetricLog(tmp_path, total_steps=6, resume_step=3, stream=io.StringIO()) as log:
        assert [r["step"] for r in read_jsonl(tmp_path)] == [1, 2, 3]
        for step in (4, 5, 6):
            log.log(step, step_metrics(step, offset=0.125))
    records = read_jsonl(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["train_loss"] for r in records] == [4.5, 4.0, 3.5, 3.125, 2.625, 2.125]
    assert scalars(tmp_path, "train/loss") == [(1, 4.5), (2, 4.0), (3, 3.5), (4, 3.125), (5, 2.625), (6, 2.125)]


def test_fresh_start_discards_earlier_metrics(tmp_path):
    with MetricLog(tmp_path, total_steps=3, stream=io.StringIO()) as log:
        log.log(1, {"train_loss": 9.0})
        log.log(2, {"train_loss": 8.0})
    with MetricLog(tmp_path, total_steps=3, stream=io.StringIO()) as log:
        log.log(1, {"train_loss": 7.0})
    assert read_jsonl(tmp_path) == [{"step": 1, "train_loss": 7.0}]
    assert scalars(tmp_path, "train/loss") == [(1, 7.0)]


def test_resume_rebuilds_lost_events_from_metrics_jsonl(tmp_path):
    with MetricLog(tmp_path, total_steps=6, stream=io.StringIO()) as log:
        for step in range(1, 5):
            log.log(step, step_metrics(step))
    for path in tmp_path.glob("events.out.tfevents.*"):  # what a kill can do to a queued writer
        path.unlink()
    with MetricLog(tmp_path, total_steps=6, resume_step=3, stream=io.StringIO()) as log:
        log.log(4, step_metrics(4, offset=0.125))
        assert log.resumed_metrics["train_loss"] == 3.5 and log.resumed_metrics["eval_loss"] == 3.5
    assert scalars(tmp_path, "train/loss") == [(1, 4.5), (2, 4.0), (3, 3.5), (4, 3.125)]
    assert scalars(tmp_path, "eval/loss") == [(2, 3.5), (4, 2.5)]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1  # older files are replaced, not stacked


def test_a_failed_metrics_write_is_one_write_error(tmp_path):
    import errno

    from common.files import WriteError

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    log = MetricLog(tmp_path, total_steps=2, stream=io.StringIO())
    log._file = FullDisk()
    with pytest.raises(WriteError, match=r"cannot write .*metrics.jsonl: No space left on device"):
        log.log(1, {"train_loss": 1.0})
    log.close()


def test_truncation_on_resume_keeps_the_file_mode(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        with MetricLog(tmp_path, total_steps=3, stream=io.StringIO()) as log:
            log.log(1, {"train_loss": 2.0})
            log.log(2, {"train_loss": 1.0})
        with MetricLog(tmp_path, total_steps=3, resume_step=1, stream=io.StringIO()):
            pass
    finally:
        os.umask(previous)
    assert read_jsonl(tmp_path) == [{"step": 1, "train_loss": 2.0}]
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_progress_bar_in_a_terminal(tmp_path):
    stream = io.StringIO()
    with MetricLog(tmp_path, total_steps=4, resume_step=0, stream=stream, progress_bar=True) as log:
        log.log(2, {"train_loss": 1.5, "eval_loss": 1.75})
        log.message("checkpoint saved")
    out = stream.getvalue()
    assert "2/4" in out and "loss 1.5 eval 1.75" in out and "checkpoint saved" in out


def test_tags_and_json_values():
    assert tag_of("energy_kwh") == "energy/kwh" and tag_of("flops_6N_attn") == "progress/flops_6N_attn"
    assert tag_of("data_wait_fraction") == "misc/data_wait_fraction" and tag_of("x/y") == "x/y"
    assert to_json_value({"a": np.int64(3), "b": jnp.float32(0.5), "c": float("nan"), "d": [math.inf, True]}) == {
        "a": 3, "b": 0.5, "c": None, "d": [None, True]}
    with pytest.raises(TypeError, match="ndarray"):
        to_json_value(np.zeros(3))
    assert formatting.format_duration(192) == "3m12s" and formatting.format_duration(3725) == "1h02m"
    assert formatting.format_duration(None) == "?" and formatting.format_count(2_500_000) == "2.5M"


def test_peak_memory_bytes():
    class Accelerator:
        def memory_stats(self):
            return {"bytes_in_use": 10, "peak_bytes_in_use": 4096}

    assert peak_memory_bytes(Accelerator()) == (4096, "device memory_stats peak_bytes_in_use")
    rss, source = peak_memory_bytes(jax.devices("cpu")[0])
    assert source == "process peak RSS (ru_maxrss)" and 10 * 2**20 < rss < 64 * 2**30
