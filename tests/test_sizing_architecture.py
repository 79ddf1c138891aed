"""Architecture-aware sizing (analysis/sizing.py `size_architecture`, `isoflop size --architecture`): planted
laws and devices whose optimum is known — Sardana & Frankle's answer on a compute-bound device, the widest,
most MLP-heavy, single-KV-head model when the KV cache is the cost, the law's optimal shape when nothing is
served — the LLaMA-style baseline, the measured device, and one-line errors for bad input."""

import dataclasses
import json
import math

import pytest

from analysis.conditional import Architecture, ConditionalLaw, CostModel, SearchSpace, measured_cost_model
from analysis.sizing import architecture_target, cheapest_plan, size, size_architecture
from analysis.synthetic import SYNTHETIC_FLOPS_PER_SECOND, run_summary
from cli_run import isoflop
from common.run_contract import write_summary

PLANTED = ConditionalLaw(E=1.8, A=400.0, B=2000.0, alpha=0.35, beta=0.37,
                         c_width=0.05, width_opt=0.1, c_ratio=0.02, ratio_opt=3.0)
INDIFFERENT = dataclasses.replace(PLANTED, c_width=0.0, c_ratio=0.0)  # the loss ignores the shape
TARGET = 2.3
SMALL = SearchSpace(widths=(0.05, 0.1), ratios=(2.0, 4.0))


def test_on_a_compute_bound_device_the_total_is_sardana_and_frankles():
    # Context 1 and unlimited bandwidth: a decoded token costs 2N FLOPs (plus an attention term of ~1e-4 of
    # that), training 6ND, both at 1e14 FLOP/s, so total seconds = Sardana & Frankle's FLOPs / 1e14.
    device = CostModel(context=1, bandwidth=1e30, peak_flops=1e14, train_flops_per_second=1e14)
    served = 2e12
    sardana = size(INDIFFERENT.at_shape(0.1, 3.0), served, target_loss=TARGET)
    result = size_architecture(INDIFFERENT, served, TARGET, device, SMALL)
    # Whole layers (about 16 here) and d_model in 256s move N off the continuous optimum, where the total is
    # flat; the baseline is only flat in training cost, so its lifetime total moves with its N.
    assert result.recommended.total_seconds == pytest.approx(sardana.inference_optimal.total_flops / 1e14, rel=2e-3)
    assert result.recommended.arch.params == pytest.approx(sardana.inference_optimal.params, rel=0.1)
    base = result.baseline
    assert base.arch.params == pytest.approx(sardana.chinchilla.params, rel=0.07)
    assert base.train_seconds == pytest.approx(sardana.chinchilla.train_flops / 1e14, rel=2e-3)
    assert base.total_seconds == pytest.approx((6 * base.tokens + 2 * served) * base.arch.params / 1e14, rel=1e-3)
    saving = result.as_dict()["saving_fraction"]
    assert saving == pytest.approx(sardana.as_dict()["flops_saved_fraction"], abs=0.03)
    assert result.recommended.loss == pytest.approx(TARGET) and result.baseline.loss == pytest.approx(TARGET)


def by_hand(law, arch, served, target, batch, context, bandwidth, train_rate):
    """Seconds of a memory-bound decode and of training, from the formulas, not the code under test."""
    attention = 2 * arch.d_model**2 + 2 * arch.d_model * arch.n_kv_heads * 64
    params = arch.n_layers * (attention + 3 * arch.d_model * arch.d_ff)
    k = float(law.correction(arch.d_model / math.sqrt(params), 3 * arch.d_model * arch.d_ff / attention))
    tokens = (k * law.B / (target - k * law.E - k * law.A / params**law.alpha)) ** (1 / law.beta)
    step = 2 * (params + batch * context * 2 * arch.n_layers * arch.n_kv_heads * 64) / bandwidth
    return 6 * params * tokens / train_rate + served * step / batch


def test_when_the_kv_cache_is_the_cost_the_widest_mlp_heavy_single_kv_head_model_wins():
    # The loss ignores the shape and decoding is memory-bound with a long context: per token the cache is
    # √N / (x·(g+1)·(1+r)) elements (x = d/√N, g query heads per KV head), so the widest x, the largest r
    # and one KV head are cheapest at every N.
    device = CostModel(batch=64, context=8192, bandwidth=1e12, peak_flops=1e18, train_flops_per_second=4e13)
    served = 1e12
    result = size_architecture(INDIFFERENT, served, TARGET, device, SMALL)
    best = result.recommended.arch
    assert best.n_kv_heads == 1 and best.ratio == pytest.approx(4.0, rel=0.01)
    assert best.d_model / math.sqrt(best.params) == pytest.approx(0.1, rel=0.1)  # d_model rounds to 256s
    base = result.baseline.arch
    assert base.n_heads == 4 * base.n_kv_heads and base.ratio == pytest.approx(5.0, rel=0.01)
    hand = [by_hand(INDIFFERENT, plan.arch, served, TARGET, 64, 8192, 1e12, 4e13)
            for plan in (result.baseline, result.recommended)]
    assert result.baseline.total_seconds == pytest.approx(hand[0], rel=1e-9)
    assert result.recommended.total_seconds == pytest.approx(hand[1], rel=1e-9)
    assert result.as_dict()["saving_fraction"] == pytest.approx(1 - hand[1] / hand[0], rel=1e-9)
    assert result.as_dict()["saving_fraction"] > 0.5

    capped = size_architecture(INDIFFERENT, served, TARGET, device, dataclasses.replace(SMALL, max_heads_per_kv=4))
    assert capped.recommended.arch.n_heads == 4 * capped.recommended.arch.n_kv_heads
    assert capped.recommended.total_seconds > result.recommended.total_seconds


def test_with_nothing_served_it_is_the_laws_optimal_shape_at_its_chinchilla_optimum():
    law = dataclasses.replace(PLANTED, c_width=0.3, c_ratio=0.3)  # U-shapes steep enough to pick one grid point
    space = SearchSpace(widths=(0.05, 0.1, 0.2), ratios=(1.5, 3.0, 6.0))
    device = CostModel()
    result = size_architecture(law, 0.0, TARGET, device, space)
    best, base = result.recommended, result.baseline
    assert best.inference_seconds == 0 and base.inference_seconds == 0
    assert best.arch.d_model / math.sqrt(best.arch.params) == pytest.approx(0.1, rel=0.1)
    assert best.arch.ratio == pytest.approx(3.0, rel=0.01)

    def chinchilla_optimal(plan):  # the frontier of Chinchilla's law at the plan's own shape (sizing.cheapest_plan)
        arch = plan.arch
        return cheapest_plan(law.at_shape(arch.d_model / math.sqrt(arch.params), arch.ratio), TARGET, 0.0)

    for plan in (best, base):
        optimum = chinchilla_optimal(plan)
        assert plan.train_seconds == pytest.approx(optimum.train_flops / device.train_flops_per_second, rel=2e-3)
        assert plan.arch.params == pytest.approx(optimum.params, rel=0.1)
    # The baseline: LLaMA-style shape, standard GQA, Chinchilla-optimal for the target.
    assert base.arch.d_model / math.sqrt(base.arch.params) == pytest.approx(0.065, rel=0.1)
    assert base.arch.ratio == pytest.approx(5.0, rel=0.01) and base.arch.n_heads == 4 * base.arch.n_kv_heads
    saving = result.as_dict()["saving_fraction"]
    assert saving == pytest.approx(1 - chinchilla_optimal(best).train_flops / chinchilla_optimal(base).train_flops,
                                   abs=2e-3)
    # At the nominal shapes (the baseline's d/√N is 0.065 to within d_model's rounding to 256s):
    nominal = [cheapest_plan(law.at_shape(*shape), TARGET, 0.0).train_flops for shape in ((0.1, 3.0), (0.065, 5.0))]
    assert saving == pytest.approx(1 - nominal[0] / nominal[1], abs=0.03)


def test_a_budget_targets_the_chinchilla_optimal_llama_style_loss():
    budget = 1e21
    target, what = architecture_target(PLANTED, budget_flops=budget)
    assert what == " (the loss of the Chinchilla-optimal LLaMA-style model of a 1e+21-FLOP training budget)"
    assert target == pytest.approx(float(PLANTED.at_shape(0.065, 5.0).frontier_loss(budget)))
    assert cheapest_plan(PLANTED.at_shape(0.065, 5.0), target, 0.0).train_flops == pytest.approx(budget, rel=1e-6)
    # The whole-layer baseline's d/√N is 0.065 only to within d_model's rounding to 256s, and its factor with
    # it: it reaches the target with the Chinchilla-optimal compute of its own shape.
    base = size_architecture(PLANTED, 1e11, target, CostModel(), SMALL).baseline
    own = PLANTED.at_shape(base.arch.d_model / math.sqrt(base.arch.params), base.arch.ratio)
    assert base.as_dict()["train_flops"] == pytest.approx(cheapest_plan(own, target, 0.0).train_flops, rel=1e-3)
    assert base.as_dict()["train_flops"] == pytest.approx(budget, rel=0.1)
    with pytest.raises(ValueError, match="exactly one of"):
        architecture_target(PLANTED, target_loss=2.3, budget_flops=budget)


def bench(fractions, device_kind="cpu"):
    return {"device_kind": device_kind, "memory_bandwidth_bytes_per_second": 5e10, "peak_flops_per_second": 2.2e11,
            "results": [{"batch_size": 2**i, "decode_tokens_per_second": 10.0 * (i + 1), "bandwidth_bound_fraction": f}
                        for i, f in enumerate(fractions)]}


def write_benched_runs(root, sections):
    for i, section in enumerate(sections):
        summary = dataclasses.replace(run_summary(f"run{i}", 1e6 * (i + 1), 2e7, 3.0, 1.2e14), inference=section)
        (root / f"run{i}").mkdir(parents=True)
        write_summary(root / f"run{i}", summary)
    return root


def test_the_measured_device_is_read_from_bench_infer_and_training_throughput(tmp_path):
    root = write_benched_runs(tmp_path, [bench([0.4, 0.6]), bench([0.5]), None])
    cost, description = measured_cost_model(root, batch=16, context=512)
    # The synthetic runs train at 2e11 6N-counted FLOP/s (tokens/s = 2e11 / 6N); 0.5 is the median fraction.
    assert cost.train_flops_per_second == pytest.approx(SYNTHETIC_FLOPS_PER_SECOND)
    assert (cost.decode_efficiency, cost.bandwidth, cost.peak_flops, cost.batch, cost.context) == (0.5, 5e10, 2.2e11, 16, 512)
    assert "measured on cpu" in description and "3 `bench infer` rows" in description
    arch = Architecture(256, 4, 4, 4, 1024)  # serving it at the measured half of the bound, by hand:
    moved = 2 * (arch.params + 16 * 512 * 2 * 4 * 4 * 64)
    flops = 2 * 16 * arch.params + 2 * 16 * 512 * 4 * 2 * 256
    assert cost.tokens_per_second(arch) == pytest.approx(0.5 * 16 / max(moved / 5e10, flops / 2.2e11), rel=1e-12)


@pytest.mark.parametrize("sections, message", [
    ([None, None], "no run has `isoflop bench infer` results"),
    ([bench([0.5], device_kind="NVIDIA H200")], "measured on NVIDIA H200, cpu"),
])
def test_a_measured_device_that_cannot_be_read_is_one_line(tmp_path, sections, message):
    with pytest.raises(ValueError, match=message):
        measured_cost_model(write_benched_runs(tmp_path, sections))


@pytest.fixture
def law_file(tmp_path):
    path = tmp_path / "law.json"
    path.write_text(json.dumps({"approach": "conditional", **PLANTED.as_dict(),
                                "conventions": {"params": "non_embedding", "flops": "6N", "loss": "eval"}}))
    return path


def test_cli_table_and_json(capsys, law_file, tmp_path):
    code, out, err = isoflop(capsys, "size", "--architecture", "--law", law_file, "--inference-tokens", "1e12",
                             "--target-loss", TARGET)
    assert code == 0, err
    assert "LLaMA-style " in out and "LLaMA-style, sized" in out and "recommended" in out
    assert "device-hours" in out and "the law has no GQA term" in out and "prefill not counted" in out
    report = tmp_path / "fits.json"  # a report's fits.json holds the law under fits.conditional
    report.write_text(json.dumps({"fits": {"conditional": json.loads(law_file.read_text())}, "skipped": {}}))
    code, out, err = isoflop(capsys, "size", "--architecture", "--law", report, "--inference-tokens", "1e12",
                             "--budget", "1e21", "--serve-context", "4096", "--max-heads-per-kv", "8", "--json")
    assert code == 0, err
    sized = json.loads(out)
    assert sized["cost_unit"] == "device-seconds" and sized["cost_model"]["context"] == 4096
    best = sized["recommended"]["architecture"]
    assert best["n_heads"] / best["n_kv_heads"] <= 8
    assert sized["baseline"]["train_flops"] == pytest.approx(1e21, rel=0.1)  # d_model in 256s: see the budget test
    assert sized["recommended"]["loss"] == pytest.approx(sized["target_loss"])
    assert 0 < sized["saving_fraction"] < 1 and sized["law"]["ratio_opt"] == 3.0


def test_cli_measured_device(capsys, law_file, tmp_path):
    runs = write_benched_runs(tmp_path / "runs", [bench([0.5])])
    code, out, err = isoflop(capsys, "size", "--architecture", "--law", law_file, "--inference-tokens", "1e10",
                             "--target-loss", TARGET, "--measured", runs)
    assert code == 0, err
    assert "measured on cpu: decoding at 0.50 of the bandwidth bound" in out


def test_cli_bad_input_is_one_line_and_exit_2(capsys, law_file, tmp_path):
    chinchilla = tmp_path / "approach3.json"
    chinchilla.write_text(json.dumps({"approach": "3", "E": 1.8, "A": 400, "B": 2000, "alpha": 0.35, "beta": 0.37}))
    report = tmp_path / "fits.json"
    report.write_text(json.dumps({"fits": {"3": {}}, "skipped": {"conditional": "no architecture"}}))
    unbenched = write_benched_runs(tmp_path / "runs", [None])
    law = ["--architecture", "--law", law_file]
    for argv, message in [
        (["--architecture", "--law", tmp_path / "none.json", "--inference-tokens", "1e12", "--target-loss", "2.3"],
         "No such file"),
        (["--architecture", "--law", chinchilla, "--inference-tokens", "1e12", "--target-loss", "2.3"],
         "not an architecture-conditional law: no finite c_width, width_opt, c_ratio, ratio_opt"),
        (["--architecture", "--law", report, "--inference-tokens", "1e12", "--target-loss", "2.3"],
         "the report has no conditional fit"),
        (["--architecture", "--law", "hoffmann2022", "--inference-tokens", "1e12", "--target-loss", "2.3"],
         "has no architecture terms"),
        (law + ["--inference-tokens", "1e12", "--target-loss", "1.7"], "not above the law's irreducible loss E = 1.8"),
        (law + ["--inference-tokens", "1e12", "--target-loss", "1.81"], "out of the LLaMA-style baseline's reach"),
        (law + ["--inference-tokens", "1e12", "--budget", "1e308"],
         "training budget) is out of the LLaMA-style baseline's reach"),
        (law + ["--inference-tokens", "-1", "--target-loss", "2.3"], "--inference-tokens: must be a finite number >= 0"),
        (law + ["--inference-tokens", "1e12", "--target-loss", "2.3", "--budget", "1e21"], "not allowed with"),
        (law + ["--inference-tokens", "1e12"], "one of the arguments --target-loss --budget --target-params is required"),
        (law + ["--inference-tokens", "1e12", "--target-loss", "2.3", "--train-mfu", "1.5"], "must be a fraction"),
        (law + ["--inference-tokens", "1e12", "--target-loss", "2.3", "--measured", unbenched, "--bandwidth", "1e12"],
         "--bandwidth describes the modelled device"),
        (law + ["--inference-tokens", "1e12", "--target-loss", "2.3", "--measured", unbenched],
         "no run has `isoflop bench infer` results"),
        (["--law", "hoffmann2022", "--inference-tokens", "1e12", "--target-loss", "2.3", "--serve-batch", "8"],
         "--serve-batch applies with --architecture only"),
    ]:
        code, out, err = isoflop(capsys, "size", *argv)
        assert code == 2 and out == "", (argv, err)
        assert message in err and err.count("\n") == 1 and err.startswith("isoflop size: "), (argv, err)
