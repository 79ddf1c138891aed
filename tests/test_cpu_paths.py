"""Host-adaptive CPU paths (train/cpu_paths.py): the choice from cached times, re-measuring a missing or
corrupt cache, explicit config values untouched, accelerators left on their default, the no-native-bf16
kernel, the process-start settings in effect, and where the record shows (summary, bench, profile)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

import common.warn
from analysis.synthetic import run_summary
from common import cpuinfo
from common.run_contract import SUMMARY_FILE, read_summary, write_summary
from modeling import matvec, precision
from modeling.config import ModelConfig
from train import bench, cpu_paths, hardware, runtime, step_profile
from train.config import CONFIG_ROOT

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=256)
SEQ = 256  # candidates: xla, blocked 32, blocked 64, blocked 128
ATTENTION_TIMES = {"xla": 0.010, "blocked 32": 0.006, "blocked 64": 0.004, "blocked 128": 0.005}
MATMUL_TIMES = {"fp32": 0.004, "xla": 0.006, "f32_result": 0.002}
ZEN4 = cpuinfo.parse("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
                     "stepping\t: 1\ncpu MHz\t\t: 2596.152\nflags\t\t: fma avx2 avx512f avx512_bf16\n")
NO_BF16 = dataclasses.replace(ZEN4, flags=frozenset({"fma", "avx2"}))


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """Fake measurements that count their calls, a cache under tmp_path, and this host's CPU as ZEN4."""
    calls = []

    def attention(model, shape):
        calls.append(("attention", shape["seq_len"], shape["dtype"]))
        return dict(ATTENTION_TIMES)

    def matmul(shape):
        calls.append(("matmul", shape["d_model"], shape["d_ff"]))
        return dict(MATMUL_TIMES)

    monkeypatch.setattr(cpu_paths, "measure_attention", attention)
    monkeypatch.setattr(cpu_paths, "measure_bf16_matmul", matmul)
    monkeypatch.setattr(cpuinfo, "host", lambda: ZEN4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    common.warn.reset()
    return calls


def test_measured_choice_is_cached_and_then_read_without_measuring(measured, tmp_path, monkeypatch):
    model = dataclasses.replace(MODEL, precision="bf16_mixed")
    resolved, record = cpu_paths.resolve(model, SEQ)
    assert measured == [("attention", SEQ, "bfloat16"), ("matmul", 32, 64)]
    assert (resolved.attention_impl, resolved.attention_block_size, resolved.bf16_matmul) == ("blocked", 64,
                                                                                            "f32_result")
    assert record["attention_impl"]["source"] == "measured"
    assert record["attention_impl"]["reason"].startswith("measured: blocked 64 2.50x faster than xla")
    assert "f32_result 3.00x faster than xla, 2.00x the fp32 matmul's speed" in record["bf16_matmul"]["reason"]
    cache = tmp_path / "isoflop" / "cpu_paths.json"
    assert f"cached in {cache}" in record["attention_impl"]["reason"]
    entries = json.loads(cache.read_text())["entries"]
    assert {tuple(e["seconds"]) for e in entries.values()} == {tuple(ATTENTION_TIMES), tuple(MATMUL_TIMES)}

    def refuse(*args):
        raise AssertionError("measured although cached")

    monkeypatch.setattr(cpu_paths, "measure_attention", refuse)
    monkeypatch.setattr(cpu_paths, "measure_bf16_matmul", refuse)
    assert cpu_paths.resolve(model, SEQ) == (resolved, record)  # deterministic given the cache


def test_the_fastest_candidate_wins_whichever_it_is(measured, monkeypatch):
    monkeypatch.setattr(cpu_paths, "measure_attention", lambda model, shape: {**ATTENTION_TIMES, "xla": 0.003})
    monkeypatch.setattr(cpu_paths, "measure_bf16_matmul", lambda shape: {**MATMUL_TIMES, "xla": 0.001})
    resolved, record = cpu_paths.resolve(dataclasses.replace(MODEL, precision="bf16"), SEQ)
    assert (resolved.attention_impl, resolved.bf16_matmul) == ("xla", "xla")
    assert record["attention_impl"]["reason"].startswith("measured: xla 1.33x faster than blocked 64")
    assert record["attention_block_size"]["source"] == "unused"
    assert cpu_paths.fastest({"a": 1.0, "b": 1.0}) == "a"  # a tie goes to the first candidate


@pytest.mark.parametrize("damage", ["not json {", json.dumps({"version": 1, "entries": []}), "entry"])
def test_a_corrupt_or_malformed_cache_is_measured_again(measured, tmp_path, damage):
    cpu_paths.resolve(MODEL, SEQ)
    cache = tmp_path / "isoflop" / "cpu_paths.json"
    if damage == "entry":  # valid JSON, but the entry lacks a candidate
        data = json.loads(cache.read_text())
        (entry,) = data["entries"].values()
        del entry["seconds"]["blocked 128"]
        damage = json.dumps(data)
    cache.write_text(damage)
    resolved, _ = cpu_paths.resolve(MODEL, SEQ)
    assert len(measured) == 2 and resolved.attention_block_size == 64
    assert cpu_paths.resolve(MODEL, SEQ)[0] == resolved and len(measured) == 2  # the repaired cache is read


def test_recalibrate_measures_again(measured):
    cpu_paths.resolve(MODEL, SEQ)
    cpu_paths.resolve(MODEL, SEQ, recalibrate=True)
    assert len(measured) == 2


def test_explicit_values_are_untouched_and_nothing_is_measured(measured):
    model = dataclasses.replace(MODEL, precision="bf16_mixed", attention_impl="blocked", attention_block_size=16,
                                bf16_matmul="xla")
    resolved, record = cpu_paths.resolve(model, SEQ)
    assert resolved == model and measured == []
    assert {name: record[name]["source"] for name in ("attention_impl", "attention_block_size", "bf16_matmul")} == \
        dict.fromkeys(("attention_impl", "attention_block_size", "bf16_matmul"), "explicit")
    xla = cpu_paths.resolve(dataclasses.replace(model, attention_impl="xla"), SEQ)[1]
    assert xla["attention_block_size"]["source"] == "unused"


def test_fp32_and_linear_attention_leave_the_unused_knobs_alone(measured):
    resolved, record = cpu_paths.resolve(dataclasses.replace(MODEL, attention="linear"), SEQ)
    assert resolved.attention_impl == "auto" and resolved.bf16_matmul == "auto" and measured == []
    assert record["attention_impl"]["source"] == record["bf16_matmul"]["source"] == "unused"
    assert "precision fp32 computes in float32" in record["bf16_matmul"]["reason"]
    assert record["weight_grad"] == {"value": "small_transpose", "source": "default",
                                     "reason": record["weight_grad"]["reason"]}
    bf16 = cpu_paths.resolve(dataclasses.replace(MODEL, precision="bf16_mixed", bf16_matmul="xla"), SEQ)[1]
    assert bf16["weight_grad"]["source"] == "unused"


def test_matvec_is_a_rule_recorded_with_its_cores(measured):
    record = cpu_paths.resolve(MODEL, SEQ)[1]
    assert record["matvec"]["value"] == "split_k" and record["matvec"]["source"] == "default"
    assert "batch-1 decoding" in record["matvec"]["reason"]
    assert f"up to {matvec.cores_per_device()} cores" in record["matvec"]["reason"]
    explicit = cpu_paths.resolve(dataclasses.replace(MODEL, matvec="xla"), SEQ)[1]["matvec"]
    assert explicit["value"] == "xla" and explicit["source"] == "explicit"


def test_accelerators_keep_their_default_and_say_so(measured, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    model = dataclasses.replace(MODEL, precision="bf16_mixed")
    resolved, record = cpu_paths.resolve(model, SEQ)
    assert resolved == model and measured == [] and "cpu" not in record
    assert record["attention_impl"] == {"value": "xla", "source": "default",
                                        "reason": "accelerator default on gpu (auto = jax.nn.dot_product_attention)"}
    assert record["bf16_matmul"]["value"] == "xla" and "accelerator default on gpu" in record["bf16_matmul"]["reason"]
    assert record["weight_grad"]["source"] == "unused"  # bf16_mixed: the f32_result path owns its backward
    assert record["matvec"]["value"] == "xla"  # accelerators' kernels use the whole chip already


def test_a_failed_measurement_falls_back_to_the_static_default_with_a_warning(measured, monkeypatch, recwarn):
    def fail(model, shape):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(cpu_paths, "measure_attention", fail)
    resolved, record = cpu_paths.resolve(MODEL, SEQ)
    assert resolved.attention_impl == "auto" and record["attention_impl"]["value"] == "blocked"
    assert "measurement failed (RuntimeError)" in record["attention_impl"]["reason"]
    assert any("CPU attention choice: measurement failed" in str(w.message) for w in recwarn)


def _dot_operand_types() -> list[str]:
    """The operand types of every dot in the lowered forward + backward of one f32_result matmul."""
    jax.clear_caches()  # the host's bf16 support is read at trace time
    x, w = jnp.ones((8, 4), jnp.bfloat16), jnp.ones((4, 6), jnp.bfloat16)
    grads = jax.jit(jax.value_and_grad(lambda x, w: precision.f32_result_matmul(x, w, None, jnp.float32).sum(),
                                       argnums=(0, 1)))
    text = grads.lower(x, w).as_text()
    return [line.rsplit(": (", 1)[1].split(") ->")[0] for line in text.splitlines() if "dot_general" in line]


def test_a_host_without_native_bf16_multiplies_fp32_copies_and_says_so(measured, monkeypatch):
    native = _dot_operand_types()
    assert len(native) == 3 and all(types.count("bf16") == 2 for types in native)
    monkeypatch.setattr(cpuinfo, "host", lambda: NO_BF16)
    assert not precision.native_bf16_dots()
    emulated = _dot_operand_types()
    assert len(emulated) == 3 and all("bf16" not in types and types.count("f32") == 2 for types in emulated)
    record = cpu_paths.resolve(dataclasses.replace(MODEL, precision="bf16_mixed"), SEQ)[1]
    assert record["native_bf16"] is False
    assert record["bf16_matmul"]["reason"].startswith("host has no native bf16")
    slow = dict(MATMUL_TIMES, xla=0.008, f32_result=0.005)  # both bf16 paths slower than fp32: said so
    monkeypatch.setattr(cpu_paths, "measure_bf16_matmul", lambda shape: slow)
    record = cpu_paths.resolve(dataclasses.replace(MODEL, precision="bf16_mixed", d_ff=128), SEQ)[1]
    assert "slower than fp32 on this host" in record["bf16_matmul"]["reason"]
    jax.clear_caches()


def test_real_measurements_time_every_candidate():
    seconds = cpu_paths.measure_attention(MODEL, cpu_paths.attention_shape(MODEL, 64))
    assert list(seconds) == cpu_paths.attention_candidates(64) == ["xla", "blocked 32"]
    assert all(0 < t < 10 for t in seconds.values())
    seconds = cpu_paths.measure_bf16_matmul({"tokens": 64, "d_model": 32, "d_ff": 64})
    assert list(seconds) == cpu_paths.BF16_CANDIDATES and all(0 < t < 10 for t in seconds.values())


def test_the_cpu_xla_flag_is_added_before_the_backend_starts_and_never_over_the_users(monkeypatch):
    monkeypatch.setattr(runtime, "_backend_started", lambda: False)
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert runtime._add_cpu_xla_flag(env).startswith(f"isoflop added {runtime.CPU_XLA_FLAG}")
    assert env["XLA_FLAGS"] == f"{runtime.CPU_XLA_FLAG} --xla_force_host_platform_device_count=8"
    assert "names the copy-insertion flag itself" in runtime._add_cpu_xla_flag(env)  # a second call adds nothing
    assert env["XLA_FLAGS"].count("copy_insertion") == 1
    off = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_copy_insertion_use_region_analysis=false"}
    runtime._add_cpu_xla_flag(off)
    assert off["XLA_FLAGS"] == "--xla_cpu_copy_insertion_use_region_analysis=false"  # the user's choice wins
    accelerator = {"JAX_PLATFORMS": "tpu"}
    assert "accelerator backend" in runtime._add_cpu_xla_flag(accelerator) and "XLA_FLAGS" not in accelerator
    monkeypatch.setattr(runtime, "_backend_started", lambda: True)
    late = {"JAX_PLATFORMS": "cpu"}
    assert "too late" in runtime._add_cpu_xla_flag(late) and "XLA_FLAGS" not in late


def test_block_candidates_keep_two_to_eight_blocks():
    assert cpu_paths.attention_candidates(16) == ["xla", "blocked 16"]
    assert cpu_paths.attention_candidates(512) == ["xla", "blocked 64", "blocked 128", "blocked 256"]
    assert cpu_paths.attention_candidates(16384) == ["xla", "blocked 512"]


def test_host_runtime_says_what_is_in_effect(monkeypatch):
    monkeypatch.setattr(runtime, "_outcome", None)
    monkeypatch.setattr(runtime, "_flag_outcome", None)
    facts = runtime.host_runtime({"XLA_FLAGS": "--xla_cpu_use_onednn=true", "MALLOC_ARENA_MAX": "1"})
    assert facts["xla_flags"]["value"] == "--xla_cpu_use_onednn=true"
    allocator = facts["host_allocator"]
    assert allocator["value"] == "environment" and "MALLOC_ARENA_MAX=1" in allocator["reason"]
    facts = runtime.host_runtime({})
    assert facts["xla_flags"]["value"] == "none" and "was not called" in facts["xla_flags"]["reason"]
    assert "was not called" in facts["host_allocator"]["reason"]
    monkeypatch.setattr(runtime, "_flag_outcome", "decided")  # keep this process's XLA_FLAGS as they are
    assert runtime.configure_host_runtime("system") is None
    assert runtime.host_runtime({})["host_allocator"] == {"value": "system",
                                                          "reason": "ISOFLOP_HOST_ALLOCATOR=system: glibc's defaults"}
    monkeypatch.setattr(runtime, "_outcome", ("keep", "auto: applied at process start"))
    assert runtime.configure_host_runtime() == runtime._KEEP  # a later call (backend started) does not undo it
    assert runtime.host_runtime({})["host_allocator"]["value"] == "keep"


def test_inference_commands_settle_the_allocator_by_precision(monkeypatch, tmp_path):
    """`generate` and `bench infer` configure the host runtime themselves, from the model's precision (fp32:
    glibc's defaults under "auto"); every other command configures it first thing."""
    value, reason = runtime._apply("auto", serving_precision="fp32")  # returns before any mallopt call
    assert value == "system" and "fp32 weights" in reason
    seen = []
    monkeypatch.setattr(runtime, "configure_host_runtime",
                        lambda mode=None, *, serving_precision=None: seen.append(serving_precision))
    from launch.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  precision: bf16_mixed\n")  # a run dir without checkpoints
    ladder = str(CONFIG_ROOT / "models" / "ladder-0.yaml")
    # each stops with a one-line error after configuring: no checkpoint, a bad --batch
    assert main(["generate", str(run), "--prompt", "x"]) == 2 and seen.pop() == "bf16_mixed"
    assert main(["bench", "infer", ladder, "--batch", "0"]) == 2 and seen.pop() == "fp32"
    assert main(["bench", "infer", ladder, "model.precision=bf16", "--batch", "0"]) == 2 and seen.pop() == "bf16"
    assert main(["count", ladder]) == 0 and seen == [None]  # not an inference command: configured first


def test_a_bad_allocator_setting_is_one_line_and_exit_2(monkeypatch, capsys):
    from launch.cli import main

    monkeypatch.setenv(runtime.ENV_VAR, "bogus")
    ladder = str(CONFIG_ROOT / "models" / "ladder-0.yaml")
    for argv in (["count", ladder], ["bench", "infer", ladder]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "ISOFLOP_HOST_ALLOCATOR: 'bogus' is not one of auto, keep, system" in err and len(err.splitlines()) == 1


def test_the_summary_carries_host_paths_and_the_nominal_mfu(tmp_path, measured):
    _, record = cpu_paths.resolve(MODEL, SEQ)
    base = run_summary("r1", 1.5e7, 3e8, 3.1, 9e16, epochs=2.0, mfu=0.41)
    hw = dataclasses.replace(base.hardware, nominal_peak_flops_per_second=1.66e11, nominal_peak_flops_source="nominal")
    summary = dataclasses.replace(base, hardware=hw, mfu_nominal=0.5, host_paths=record)
    write_summary(tmp_path, summary)
    assert read_summary(tmp_path) == summary
    raw = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert raw["schema_version"] == "1.3" and raw["host_paths"]["attention_impl"]["value"] == "blocked"
    for key in ("mfu_nominal", "host_paths"):  # a 1.2 summary has none of the new fields
        del raw[key]
    del raw["hardware"]["nominal_peak_flops_per_second"], raw["hardware"]["nominal_peak_flops_source"]
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({**raw, "schema_version": "1.2"}))
    old = read_summary(tmp_path)
    assert old.mfu_nominal is None and old.host_paths is None and old.hardware.nominal_peak_flops_per_second is None


def test_bench_text_shows_both_mfus_and_the_paths(measured):
    _, record = cpu_paths.resolve(MODEL, SEQ)
    result = {"compile_seconds": 2.0, "step_seconds_median": 0.43, "tokens_per_second": 9548.0,
              "data_wait_share": 0.01, "devices": 1, "device_kind": "cpu", "load_average_1m": 1.9, "mfu": 0.53,
              "peak_flops_per_second": 5.1e11, "peak_source": "measured: x", "mfu_nominal": 0.41,
              "nominal_peak_flops_per_second": 6.6e11, "nominal_peak_source": "nominal: y", "host_paths": record}
    text = bench.format_bench(result, 10)
    assert "MFU 53.0% of 5.1e+11 FLOP/s (measured: x)" in text
    assert "MFU 41.0% of nominal 6.6e+11 FLOP/s (nominal: y)" in text
    assert "  attention_impl: blocked (measured) — measured: blocked 64" in text and "  xla_flags: " in text


def test_profile_explains_mfu_as_matmul_share_times_matmul_rate():
    rows = [{"part": "matmul: feed-forward", "forward_seconds": 0.1, "backward_seconds": 0.1, "ops": 4},
            {"part": "attention softmax/mask/layout", "forward_seconds": 0.05, "backward_seconds": 0.05, "ops": 9},
            {"part": "norms", "forward_seconds": 0.02, "backward_seconds": 0.03, "ops": 3},
            {"part": "optimizer update", "forward_seconds": 0.05, "backward_seconds": 0.0, "ops": 7}]
    result = {"wall_seconds_per_step_median": 0.5, "rows": rows, "model_flops_per_step": 1e11,
              "peak_flops_per_second": 5e11}
    lines = step_profile.mfu_gap(result)
    assert lines[0].startswith("matmuls") and "40.0% of the wall step" in lines[0]
    # MFU 1e11 / 0.5 s / 5e11 = 40% = matmuls 40% of the step x their rate 5e11 = 100% of the peak
    assert lines[-1].startswith("MFU 40.0% = matmuls 40.0% of the step x their rate 5e+11 FLOP/s = 100.0%")
    assert {line.split("  ")[0] for line in lines[:-1]} == {
        "matmuls", "attention softmax/mask/layout", "element-wise and other", "optimizer update",
        "not in any op (dispatch, waits, other processes)"}
    assert "50.0 ms  10.0% of the wall step" in lines[-2]  # 0.5 s - 0.45 s in ops


@pytest.mark.slow
def test_a_training_records_its_paths_and_both_mfus(tmp_path, measured):
    """The trainer builds its model with the host's choice and its summary.json says which and why."""
    import yaml

    from launch.cli import main
    from micro_corpus import micro_corpus

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"vocab_size": 256, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_seq_len": 256},
        "data": {"source": "text", "path": str(micro_corpus(tmp_path)), "seq_len": SEQ, "batch_size": 2,
                 "eval_tokens": 512, "eval_fraction": 0.1, "cache_dir": str(tmp_path / "cache")},
        "budget": {"tokens": 2 * SEQ * 6}, "run": {"log_every": 2, "eval_every": 6, "checkpoint_every": 6},
        "hardware": {"peak_flops_per_second": 1e11},
    }))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    summary = read_summary(tmp_path / "run")
    assert measured == [("attention", SEQ, "float32")]  # the fake times: blocked 64 wins
    assert summary.host_paths["attention_impl"]["value"] == "blocked"
    assert summary.host_paths["attention_block_size"]["value"] == 64
    assert set(summary.host_paths) >= {"backend", "cpu", "cpu_flags", "bf16_matmul", "host_allocator", "xla_flags"}
    assert summary.hardware.nominal_peak_flops_per_second == pytest.approx(
        hardware.cpu_nominal_peak("fp32").flops_per_second / hardware._local_cpu_device_count())
    assert summary.mfu_nominal == pytest.approx(
        summary.mfu * summary.hardware.peak_flops_per_second / summary.hardware.nominal_peak_flops_per_second)
