"""The trainer's promises under bad input and faults (issue 8): a rejected command writes nothing; a failed
write stops the run with one line and leaves it resumable, bitwise; one training per run directory; a
stop signal at any moment ends cleanly; TensorBoard survives a kill; eval has its own cadence; files
respect the umask."""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.files import ExclusiveLock
from launch.cli import main
from train.energy import EnergyMeter
from test_train import DETERMINISTIC, read_metrics, write_config

# 20 steps of 256 tokens; every number below is a multiple of 5 so faults land on known steps.
STEPS = 20
RUN = {"log_every": 5, "eval_every": 10, "checkpoint_every": 5}
DETERMINISTIC_TAGS = ("train/loss", "eval/loss", "train/learning_rate", "train/grad_norm", "progress/tokens",
                      "progress/flops_6N", "progress/flops_6N_attn", "progress/flops_chinchilla")


def small_config(tmp_path, **sections):
    sections = {"budget": {"tokens": 256 * STEPS}, "run": dict(RUN), **sections}
    return write_config(tmp_path, **sections)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("isoflop train:")]


def assert_one_line(err: str, *fragments: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def final_params(config_path: pathlib.Path, run: pathlib.Path):
    """The params of the run's latest checkpoint, as numpy arrays."""
    from train import budget, config as config_lib, loop
    from train.checkpoint import Checkpointer

    config = config_lib.load(config_path)
    setup = loop.build_training(config, budget.plan_for(config).steps)
    checkpointer = Checkpointer(run / "checkpoints", keep=3)
    try:
        params, *_ = checkpointer.restore(checkpointer.latest_step(), setup.params, setup.opt_state)
    finally:
        checkpointer.close()
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def deterministic(run: pathlib.Path) -> list[dict]:
    return [{key: row.get(key) for key in DETERMINISTIC} for row in read_metrics(run)]


def summary_of(run: pathlib.Path) -> dict | None:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of `small_config`: what every faulted-then-resumed run must equal."""
    tmp_path = tmp_path_factory.mktemp("reference")
    config = small_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    return config, run


# ----------------------------------------------------------------------------- rejected before anything


def _token_file(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(b"\x01\x00\x02")  # 3 bytes: not a whole number of uint16 tokens
    return path


REJECTED = {
    "budget below one step": lambda tmp: ["budget.tokens=10"],
    "missing data path": lambda tmp: [f"data.path={tmp / 'no-such-corpus'}"],
    "token file of the wrong size": lambda tmp: ["data.source=tokens", "data.token_dtype=uint16",
                                                 f"data.path={_token_file(tmp)}"],
    "mesh larger than the devices": lambda tmp: ["run.mesh_data=2"],
    "schedule longer than the run": lambda tmp: ["optimizer.schedule=wsd", "optimizer.warmup_fraction=0.7",
                                                 "optimizer.decay_fraction=0.6"],
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_train_writes_nothing(tmp_path, capsys, case):
    config = small_config(tmp_path)
    out = tmp_path / "runs" / "x"
    assert main(["train", str(config), *REJECTED[case](tmp_path), "--out", str(out)]) == 2
    assert_one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache").exists()  # nothing was tokenised either


@pytest.mark.parametrize("out", ["", "file"])
def test_bad_out_is_rejected(tmp_path, capsys, out):
    config = small_config(tmp_path)
    if out == "file":
        out = str(tmp_path / "a-file")
        pathlib.Path(out).write_text("mine\n")
    assert main(["train", str(config), "--out", out]) == 2
    assert_one_line(capsys.readouterr().err, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus", "config.yaml"] + (["a-file"] if out else []))
    if out:
        assert pathlib.Path(out).read_text() == "mine\n"


@pytest.mark.slow
def test_corrected_command_reuses_the_out_of_a_rejected_one(tmp_path, capsys):
    config = small_config(tmp_path)
    out = tmp_path / "runs" / "x"
    assert main(["train", str(config), "budget.tokens=10", "--out", str(out)]) == 2
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert summary_of(out)["status"] == "completed"


@pytest.mark.slow
def test_batch_not_divisible_by_the_mesh_writes_nothing(tmp_path):
    config = small_config(tmp_path, data={"batch_size": 3})
    out = tmp_path / "runs" / "x"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-m", "launch.cli", "train", str(config), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_line(done.stderr, "data.batch_size")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- a full disk


def _fail_checkpoint_of_step(monkeypatch, step: int):
    """Orbax's JSON writes of checkpoint `step` fail with ENOSPC (inside Orbax's background save)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    real = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def save(self, item, directory):
        if pathlib.Path(str(directory)).parent.name.startswith(f"{step}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
        return await real(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save)


def _fail_metrics_line_of_step(monkeypatch, step: int):
    """The metrics.jsonl write of `step` fails with ENOSPC (through the real common.files.append_line)."""
    from train import metric_log

    real = metric_log.append_line

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def append(handle, line, path):
        return real(FullDisk(handle) if json.loads(line)["step"] == step else handle, line, path)

    monkeypatch.setattr(metric_log, "append_line", append)


def _fail_summary(monkeypatch, step: int):
    """Renaming summary.json into place fails with ENOSPC (os.replace inside common.files.atomic_write)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("summary.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


FAULTS = {  # name -> (patch, the file the one line names, the latest checkpoint that must remain)
    "checkpoint": (_fail_checkpoint_of_step, "checkpoints/10.", 5),
    "metrics": (_fail_metrics_line_of_step, "metrics.jsonl", 5),
    "summary": (_fail_summary, "summary.json", STEPS),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_full_disk_stops_with_one_line_and_resumes_bitwise(tmp_path, capsys, monkeypatch, reference, fault):
    patch, named, kept_step = FAULTS[fault]
    config = small_config(tmp_path)
    run = tmp_path / "run"
    closed = []
    with monkeypatch.context() as patched:
        patch(patched, 10)
        real_close = EnergyMeter.close
        patched.setattr(EnergyMeter, "close", lambda meter: closed.append(real_close(meter)))
        assert main(["train", str(config), "--out", str(run)]) == 1
    assert_one_line(capsys.readouterr().err, named, "No space left on device")
    assert len(closed) == 1  # the energy meter is closed however the run ends
    assert summary_of(run) is None or summary_of(run)["status"] != "completed"
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == kept_step  # the run stopped at once: nothing saved after the failure

    assert main(["train", str(config), "--out", str(run)]) == 0  # space freed
    reference_config, reference_run = reference
    assert deterministic(run) == deterministic(reference_run)
    for resumed, uninterrupted in zip(final_params(config, run), final_params(reference_config, reference_run),
                                      strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)


# ----------------------------------------------------------------------------- one training per directory


@pytest.mark.slow
def test_a_second_training_of_a_directory_is_refused(tmp_path, capsys):
    config = small_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    with ExclusiveLock(run / ".lock", "test"):  # another training holds the directory
        assert main(["train", str(config), "--out", str(run)]) == 1
        assert_one_line(capsys.readouterr().err, "in use by pid")
        assert not (run / "config.yaml").exists()
    assert main(["train", str(config), "--out", str(run)]) == 0


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    config = small_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.files import ExclusiveLock\n"
                               f"with ExclusiveLock({str(run / '.lock')!r}, 'x'):\n"
                               "    print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=30)
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # the dead holder's pid is still written
    assert main(["train", str(config), "--out", str(run)]) == 0


# ----------------------------------------------------------------------------- stop signals


def _train_subprocess(config, run):
    return subprocess.Popen([sys.executable, "-m", "launch.cli", "train", str(config), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(run: pathlib.Path, at_least: int, process, timeout: float = 180) -> int:
    """The first finished checkpoint step >= at_least (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = (run / "checkpoints").glob("*") if (run / "checkpoints").exists() else []
        steps = [int(p.name) for p in found if p.name.isdigit()]
        if any(s >= at_least for s in steps):
            return max(steps)
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {at_least} within {timeout} s: {process.poll()}")


@pytest.mark.slow
def test_sigterm_at_a_checkpoint_step_checkpoints_once_and_resumes(tmp_path):
    config = small_config(tmp_path, run={"log_every": 1, "eval_every": 10, "checkpoint_every": 1})
    run = tmp_path / "run"
    process = _train_subprocess(config, run)
    _wait_for_checkpoint(run, 2, process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 1, output[-3000:]
    line = assert_one_line(output, "interrupted by SIGTERM at step")
    assert "StepAlreadyExists" not in output
    assert summary_of(run)["status"] == "failed"
    stopped = int(line.split("at step ")[1].split(";")[0])
    assert max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == stopped
    assert main(["train", str(config), "--out", str(run)]) == 0
    assert summary_of(run)["steps"] == STEPS


@pytest.mark.parametrize("moment", ["multihost.initialize_from_env", "data.prepare"])
def test_sigterm_before_the_run_directory_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, moment):
    """A signal while the command starts up (where JAX loads) or while the data is tokenised."""
    import importlib

    module_name, function = moment.split(".")
    module = importlib.import_module(f"train.{module_name}")
    real = getattr(module, function)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, signalled)
    config = small_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 1
    assert_one_line(capsys.readouterr().err, "interrupted by SIGTERM")
    assert not run.exists()


@pytest.mark.slow
def test_sigterm_during_setup_leaves_a_resumable_run(tmp_path, capsys, monkeypatch):
    from train import loop

    real = loop.build_training

    def build(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    config = small_config(tmp_path)
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(loop, "build_training", build)
        assert main(["train", str(config), "--out", str(run)]) == 1
    assert_one_line(capsys.readouterr().err, "interrupted by SIGTERM at step 0")
    assert summary_of(run)["status"] == "failed" and summary_of(run)["steps"] == 0
    assert main(["train", str(config), "--out", str(run)]) == 0
    assert summary_of(run)["steps"] == STEPS


# ----------------------------------------------------------------------------- TensorBoard after a kill


def scalars(run: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_after_a_kill_right_after_a_checkpoint_equals_an_uninterrupted_run(tmp_path, reference):
    config = small_config(tmp_path)
    run = tmp_path / "run"
    process = _train_subprocess(config, run)
    _wait_for_checkpoint(run, 5, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert main(["train", str(config), "--out", str(run)]) == 0
    resumed, uninterrupted = scalars(run), scalars(reference[1])
    assert sorted(resumed) == sorted(uninterrupted)
    for tag in resumed:  # every tag at the same steps; the reproducible ones with the same values
        assert [step for step, _ in resumed[tag]] == [step for step, _ in uninterrupted[tag]], tag
        if tag in DETERMINISTIC_TAGS:
            assert resumed[tag] == uninterrupted[tag], tag
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


# ----------------------------------------------------------------------------- eval cadence


@pytest.mark.slow
def test_eval_runs_at_its_own_cadence(tmp_path):
    config = small_config(tmp_path, run={"log_every": 4, "eval_every": 6, "checkpoint_every": 20})
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    rows = read_metrics(run)
    assert [r["step"] for r in rows if r.get("eval_loss") is not None] == [6, 12, 18, 20]
    assert [r["step"] for r in rows if r.get("train_loss") is not None] == [4, 8, 12, 16, 20]
    assert [step for step, _ in scalars(run)["eval/loss"]] == [6, 12, 18, 20]


# ----------------------------------------------------------------------------- throughput


def _stop_after_saving(monkeypatch, stop_step: int):
    """SIGTERM this process right after the checkpoint of `stop_step` is handed to Orbax."""
    from train import checkpoint

    real = checkpoint.Checkpointer.save

    def save_then_stop(self, step, *args):
        real(self, step, *args)
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_stop)


@pytest.mark.slow
def test_summary_throughput_excludes_the_compile_interval_of_every_session(tmp_path, monkeypatch, reference):
    config = small_config(tmp_path, run={"log_every": 10, "eval_every": 10, "checkpoint_every": 10})
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        _stop_after_saving(patched, 10)
        assert main(["train", str(config), "--out", str(run)]) == 1
    assert main(["train", str(config), "--out", str(run)]) == 0
    # each session had one log interval, the one that compiled the step: no steady-state figure exists
    assert [row["tokens_per_second"] > 0 for row in read_metrics(run)] == [True, True]
    summary = summary_of(run)
    assert summary["tokens_per_second"] is None and summary["mfu"] is None
    assert summary_of(reference[1])["tokens_per_second"] > 0  # 4 intervals, 3 of them steady


# ----------------------------------------------------------------------------- file modes


@pytest.mark.slow
def test_files_respect_the_umask_after_a_resume(tmp_path, monkeypatch):
    config = small_config(tmp_path)
    run = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        with monkeypatch.context() as patched:
            _stop_after_saving(patched, 10)
            assert main(["train", str(config), "--out", str(run)]) == 1
        os.umask(0o022)
        assert main(["train", str(config), "--out", str(run)]) == 0
    finally:
        os.umask(previous)
    # created under 027, rewritten on resume keeping their mode (not mkstemp's 0600); the event file is
    # created anew by the resumed session, under 022
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name
    assert [p.stat().st_mode & 0o777 for p in run.glob("events.out.tfevents.*")] == [0o644]
