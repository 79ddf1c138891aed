"""`isoflop bench infer`: cache bytes measured against the accounting, the bandwidth bound by hand, option
errors, every reported field, and the result recorded in a run's summary."""

import dataclasses
import json

import pytest
from flax import nnx

import common.warn
from common.run_contract import read_summary
from common.validation import ConfigError
from modeling import accounting, matvec
from modeling.config import ModelConfig
from modeling.transformer import Transformer
from test_generate import CHECKPOINT_STEP, TINY, make_run_dir
from train import bench_infer, hardware
from train import config as config_lib
from train.bench_infer import Request, bandwidth_bound_seconds, cache_bytes, decode_bytes_per_step

SMALL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32, ffn="swiglu",
                    norm="rmsnorm", position="rope", tie_embeddings=True, precision="fp32")
GQA = dataclasses.replace(SMALL, attention="gqa", n_kv_heads=1)  # 4x fewer KV heads


@pytest.mark.parametrize("cfg", [SMALL, GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("batch, tokens", [(1, 7), (3, 12)])
def test_measured_cache_bytes_are_analytic_bytes_per_token_times_tokens(cfg, batch, tokens):
    cache = Transformer(cfg, nnx.Rngs(0)).empty_cache(batch, tokens)
    assert cache_bytes(cache) == accounting.kv_cache_bytes_per_token(cfg) * batch * tokens


def test_gqa_with_4x_fewer_kv_heads_has_exactly_4x_fewer_kv_bytes():
    assert accounting.kv_cache_bytes_per_token(SMALL) == 4 * accounting.kv_cache_bytes_per_token(GQA)
    assert accounting.kv_cache_bytes_per_token(SMALL) == 2 * 2 * 4 * 8 * 4  # K and V, layers, heads, head_dim, fp32


def test_bandwidth_bound_by_hand():
    # Weights one step reads, parameters per layer: Wq, Wk, Wv, Wo 4·32·32 = 4096; SwiGLU 3·32·64 = 6144;
    # two RMSNorm scales 64. Two layers, a final norm (32) and the tied embedding read as the head (64·32).
    weights = (2 * (4096 + 6144 + 64) + 32 + 64 * 32) * 4
    # Per token of context: K and V, 4 heads of 8, fp32, 2 layers = 512 bytes. P = 5, G = 4: steps 1..3
    # attend to 6, 7, 8 tokens, 7 on average; batch 3.
    kv = 3 * 7 * 512
    moved = decode_bytes_per_step(SMALL, batch_size=3, prompt_len=5, gen_len=4)
    assert moved == {"weights": weights, "kv_cache": kv, "total": weights + kv}
    assert weights + kv == 101_504
    assert bandwidth_bound_seconds(moved["total"], 1e9) == pytest.approx(101_504 / 1e9)
    assert bandwidth_bound_seconds(moved["total"], None) is None
    untied = dataclasses.replace(SMALL, tie_embeddings=False)  # the head is read, the lookup table is not
    assert bench_infer.weight_bytes_per_step(untied) == weights


@pytest.mark.parametrize("text, message", [
    ("1,x", "must be a comma-separated list of integers > 0"),
    ("0,4", "must be a comma-separated list of integers > 0"),
    ("", "must be a comma-separated list of integers > 0"),
    ("4,1,4", "lists a batch size twice"),
])
def test_bad_batch_lists_are_one_line(text, message):
    with pytest.raises(ConfigError) as err:
        bench_infer.parse_batches(text)
    assert len(err.value.problems) == 1 and message in err.value.problems[0]


def test_batches_are_sorted():
    assert bench_infer.parse_batches("16, 1,4") == (1, 4, 16)


@pytest.mark.parametrize("request_, message", [
    (Request((1,), 4, 1, 1), "--gen-len: 1 must be an integer >= 2"),
    (Request((1,), 0, 4, 1), "--prompt-len: 0 must be an integer >= 1"),
    (Request((1,), 4, 4, 0), "--repeats: 0 must be an integer >= 1"),
    (Request((1,), 30, 4, 1), "--prompt-len + --gen-len: 34 tokens exceed model.max_seq_len=32"),
])
def test_bad_shapes_are_refused(request_, message):
    with pytest.raises(ConfigError) as err:
        bench_infer.check_request(request_, SMALL)
    assert err.value.problems[0].startswith(message)


@pytest.fixture
def fake_machine(monkeypatch, tmp_path):
    """Fixed peak and bandwidth calibrations (the real ones take seconds and depend on the load)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "_session_peaks", {})
    monkeypatch.setattr(hardware, "_busy_seconds", lambda: None)
    monkeypatch.setattr(hardware, "measure_cpu_peak", lambda dtype: 1e11)
    monkeypatch.setattr(hardware, "measure_cpu_bandwidth",
                        lambda: {"bytes_per_second": 2e10, "sum_bytes_per_second": 2e10,
                                 "gemv_bytes_per_second": 1e10, "array_bytes": 1 << 20})
    common.warn.reset()


TOP_FIELDS = {"prompt_len", "gen_len", "repeats", "attention", "n_heads", "n_kv_heads", "precision", "matvec", "params",
              "platform", "device_kind", "memory_bandwidth_bytes_per_second", "memory_bandwidth_source",
              "peak_flops_per_second", "peak_flops_source", "load_average_1m_before", "host_runtime", "measured_at",
              "results"}
ROW_FIELDS = {
    "batch_size", "compile_and_warmup_seconds", "time_to_first_token_seconds", "prefill_tokens_per_second",
    "prefill_model_flops", "prefill_mfu", "decode_latency_seconds_median", "decode_latency_seconds_p90",
    "decode_cpu_seconds_median", "decode_tokens_per_second", "total_tokens_per_second",
    "generated_tokens_per_second", "kv_cache_bytes_measured", "kv_cache_bytes_analytic",
    "kv_cache_bytes_per_token_analytic", "decode_weight_bytes_per_step", "decode_kv_bytes_per_step",
    "decode_bytes_per_step", "bandwidth_bound_seconds_per_step", "bandwidth_bound_fraction",
    "prefill_memory_bytes_compiled", "decode_memory_bytes_compiled", "peak_memory_bytes",
    "peak_memory_source", "energy_joules_per_generated_token", "energy_source", "load_average_1m",
}


def test_bench_reports_every_field_consistently(fake_machine):
    result = bench_infer.bench_infer(Transformer(GQA, nnx.Rngs(0)), GQA, Request((1, 2), 4, 3, 2))
    assert set(result) == TOP_FIELDS and [row["batch_size"] for row in result["results"]] == [1, 2]
    assert result["memory_bandwidth_bytes_per_second"] == 2e10
    assert result["memory_bandwidth_source"].startswith("measured: ")
    assert result["matvec"] == {"value": "split_k", "cores_per_device": matvec.cores_per_device()}  # CPU's auto
    json.dumps(result, allow_nan=False)  # plain JSON
    for row in result["results"]:
        assert set(row) == ROW_FIELDS
        batch = row["batch_size"]
        assert row["kv_cache_bytes_measured"] == row["kv_cache_bytes_analytic"] == batch * 7 * 128
        assert row["decode_bytes_per_step"] == decode_bytes_per_step(GQA, batch, 4, 3)["total"]
        assert row["bandwidth_bound_seconds_per_step"] == pytest.approx(row["decode_bytes_per_step"] / 2e10)
        assert row["bandwidth_bound_fraction"] == pytest.approx(
            row["bandwidth_bound_seconds_per_step"] / row["decode_latency_seconds_median"])
        assert row["decode_tokens_per_second"] == pytest.approx(batch / row["decode_latency_seconds_median"])
        assert row["decode_latency_seconds_p90"] >= row["decode_latency_seconds_median"] > 0
        assert row["prefill_mfu"] == pytest.approx(
            row["prefill_model_flops"] / row["time_to_first_token_seconds"] / 1e11)
        assert row["energy_source"] and row["energy_joules_per_generated_token"] >= 0
        held = row["kv_cache_bytes_measured"] + 4 * result["params"]["total"]  # the cache and fp32 weights
        assert row["prefill_memory_bytes_compiled"] >= row["decode_memory_bytes_compiled"] >= held
    assert "n/a" not in bench_infer.format_result(result).splitlines()[2]


def test_a_run_directory_is_benchmarked_from_its_checkpoint_and_recorded(fake_machine, tmp_path):
    run = make_run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match="a run directory's config is fixed"):
        bench_infer.run(str(run), ["model.d_model=64"], Request((1,), 4, 3, 1))
    assert read_summary(run).inference is None
    result, path = bench_infer.run(str(run), [], Request((1,), 4, 3, 1))
    assert path == run and result["checkpoint_step"] == CHECKPOINT_STEP
    recorded = read_summary(run).inference
    assert recorded == json.loads(json.dumps(result)) and set(recorded["results"][0]) == ROW_FIELDS


def test_a_run_directory_without_a_summary_is_refused_before_timing(fake_machine, tmp_path):
    run = make_run_dir(tmp_path / "run")
    (run / "summary.json").unlink()
    with pytest.raises(ConfigError, match="has no summary.json"):
        bench_infer.run(str(run), [], Request((1,), 4, 3, 1))


def test_a_config_is_benchmarked_with_fresh_weights_and_overrides(fake_machine):
    overrides = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64"]
    result, path = bench_infer.run(str(TINY), overrides, Request((1,), 4, 2, 1))
    assert path is None and "checkpoint_step" not in result
    assert result["params"] == accounting.param_counts(config_lib.load(TINY, overrides).model)
