"""The architecture-conditional law (analysis/conditional.py): planted coefficients recovered from run
directories, the staged search's optimum equal to exhaustive search's on a planted case, the Pareto front,
and one-line errors when the data cannot fit the law."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from analysis import conditional
from analysis.conditional import Architecture, Candidate, ConditionalLaw, CostModel, SearchSpace
from analysis.synthetic import run_summary, write_csv, write_run_dirs
from cli_run import isoflop
from common.run_contract import write_summary

PLANTED = ConditionalLaw(E=1.8, A=400.0, B=2000.0, alpha=0.35, beta=0.37,
                         c_width=0.05, width_opt=0.1, c_ratio=0.02, ratio_opt=3.0)
LOOSE = SearchSpace(params_tolerance=math.inf)  # the synthetic grid: any whole number of layers


def architectures():
    """Four sizes × four widths × four ratios × two token multipliers: (architecture, tokens)."""
    for n, w, r, m in itertools.product((2e6, 5e6, 1.2e7, 3e7), (0.03, 0.06, 0.12, 0.24), (1, 2, 4, 8), (10, 40)):
        d_model = max(1, round(w * math.sqrt(n) / 64)) * 64
        arch = conditional.build(n, d_model, r, max(1, d_model // 64 // 4), LOOSE)
        yield arch, arch.params * m


def write_arch_runs(root, law=PLANTED, noise=0.002, inference=False):
    rng = np.random.default_rng(0)
    for i, (arch, tokens) in enumerate(architectures()):
        loss = float(law.loss(arch.params, tokens, arch.d_model / math.sqrt(arch.params), arch.ratio))
        loss *= math.exp(rng.normal(0, noise))
        summary = run_summary(f"run{i:03d}", arch.params, tokens, loss, 6 * arch.params * tokens)
        summary = dataclasses.replace(summary, d_model=arch.d_model, n_layers=arch.n_layers, n_heads=arch.n_heads,
                                      n_kv_heads=arch.n_kv_heads, d_ff=arch.d_ff, ffn=arch.ffn)
        if inference:
            summary = dataclasses.replace(summary, inference={"results": [
                {"batch_size": 1, "decode_tokens_per_second": 100.0 + i},
                {"batch_size": 16, "decode_tokens_per_second": 900.0 + i}]})
        run_dir = root / f"run{i:03d}"
        run_dir.mkdir(parents=True)
        write_summary(run_dir, summary)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return write_arch_runs(tmp_path_factory.mktemp("arch"), inference=True)


def test_the_form_is_the_papers_eq_3_divided_by_its_minimum():
    # Bian et al. 2025, section 5.1: the multiplicative calibration fitted on the 80M-297M runs, whose optimum
    # the paper gives as d/√N = 0.08, r = 1.032.
    a0, a1, a2, b0, b1, b2 = 2.697, 0.0974, 0.0078, 0.3870, 0.0063, 0.0065
    width, ratio = np.geomspace(0.02, 0.4, 9), np.geomspace(0.3, 12, 9)
    paper_width, paper_ratio = a0 + a1 * np.log(width) + a2 / width, b0 + b1 * np.log(ratio) + b2 / ratio
    x_opt, r_opt = a2 / a1, b2 / b1
    assert (round(x_opt, 3), round(r_opt, 3)) == (0.080, 1.032)
    scale_w, scale_r = a0 + a1 * np.log(x_opt) + a1, b0 + b1 * np.log(r_opt) + b1  # each factor's minimum
    law = dataclasses.replace(PLANTED, c_width=a1 / scale_w, width_opt=x_opt, c_ratio=b1 / scale_r, ratio_opt=r_opt)
    np.testing.assert_allclose(law.correction(width, ratio), paper_width * paper_ratio / (scale_w * scale_r), rtol=1e-12)


def test_fit_recovers_planted_coefficients_from_run_directories(capsys, runs, tmp_path):
    code, out, err = isoflop(capsys, "fit", runs, "--approach", "conditional", "--bootstrap", "0",
                             "--lbfgs-starts", "16", "--json")
    assert code == 0, err
    (tmp_path / "law.json").write_text(out)
    result = json.loads(out)
    for name, rel in (("E", 0.05), ("alpha", 0.05), ("beta", 0.05), ("width_opt", 0.02), ("ratio_opt", 0.02),
                      ("c_width", 0.1), ("c_ratio", 0.1)):
        assert result[name] == pytest.approx(getattr(PLANTED, name), rel=rel), name
    held = result["details"]["held_out"]
    assert held["folds"] == 5 and len(held["per_run"]) == 128
    assert held["rmse_relative"] < 0.005  # 0.2% noise: held-out runs are predicted to about that
    assert result["details"]["search"]["best"]["loss"] <= result["details"]["search"]["target_loss"]
    code, out, err = isoflop(capsys, "size", "--architecture", "--law", tmp_path / "law.json", "--inference-tokens",
                             "1e9", "--target-params", "3e7", "--json")  # the fit's JSON feeds `size --architecture`
    assert code == 0, err
    assert json.loads(out)["law"]["ratio_opt"] == pytest.approx(result["ratio_opt"])


def test_text_output_and_bootstrap_intervals(capsys, runs):
    code, out, err = isoflop(capsys, "fit", runs, "--approach", "conditional", "--bootstrap", "4",
                             "--lbfgs-starts", "8")
    assert code == 0, err
    assert "Architecture-conditional (Bian et al. 2025)" in out and "width_opt" in out
    assert "held-out runs (5-fold" in out and "LLaMA-style baseline" in out
    assert "Bian et al. 2025 (arXiv 2510.18245)'s eq. 3" in out


def test_inference_sections_are_read_as_measured_throughput(runs):
    from analysis.sources import Conventions, load_runs

    data = load_runs(runs, Conventions())
    assert sorted(data.extra("decode_tokens_per_second"))[:2] == [900.0, 901.0]  # the best batch of each run
    assert len(conditional.measured_points(data)) == len(data)


def test_runs_that_do_not_vary_the_architecture_are_a_one_line_error(capsys, tmp_path):
    n = np.geomspace(1e6, 3e7, 16)
    write_run_dirs(tmp_path, n, 20 * n, 3 + 0.0 * n, curves=False)
    code, out, err = isoflop(capsys, "fit", tmp_path, "--approach", "conditional", "--bootstrap", "0")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "do not vary the architecture" in err


def test_a_csv_without_the_architecture_columns_is_a_one_line_error(capsys, tmp_path):
    n = np.geomspace(1e6, 1e8, 16)
    table = write_csv(tmp_path / "runs.csv", {"params": n, "tokens": 20 * n, "loss": 3 + 0 * n, "d_model": 0 * n + 256})
    code, out, err = isoflop(capsys, "fit", table, "--approach", "conditional", "--bootstrap", "0")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "n_layers, n_heads, n_kv_heads, d_ff, ffn" in err


def test_a_csv_with_the_architecture_columns_fits(capsys, tmp_path):
    archs = list(architectures())
    loss = [float(PLANTED.loss(a.params, t, a.d_model / math.sqrt(a.params), a.ratio)) for a, t in archs]
    columns = {"params": np.array([a.params for a, _ in archs]), "tokens": np.array([t for _, t in archs]),
               "loss": np.array(loss), **{name: np.array([getattr(a, name) for a, _ in archs], dtype=float)
                                          for name in conditional.ARCH_COLUMNS},
               "ffn": np.array([a.ffn for a, _ in archs], dtype=object)}
    code, out, err = isoflop(capsys, "fit", write_csv(tmp_path / "arch.csv", columns), "--approach", "conditional",
                             "--bootstrap", "0", "--lbfgs-starts", "8", "--json")
    assert code == 0, err
    assert json.loads(out)["ratio_opt"] == pytest.approx(PLANTED.ratio_opt, rel=0.01)


def exhaustive_optimum(law, params, tokens, target, space, cost):
    """Every width and r of the space with every n_kv_heads: the brute force the staged search must match."""
    best = None
    for w, r in itertools.product(space.widths, space.ratios):
        d_model = max(1, round(w * math.sqrt(params) / space.head_dim)) * space.head_dim
        heads = d_model // space.head_dim
        for kv in (k for k in range(1, heads + 1) if heads % k == 0):
            arch = conditional.build(params, d_model, r, kv, space)
            if arch is None:
                continue
            loss = float(law.loss(arch.params, tokens, arch.d_model / math.sqrt(arch.params), arch.ratio))
            speed = cost.tokens_per_second(arch)
            if loss <= target and (best is None or speed > best[1]):
                best = (arch, speed)
    return best


def test_search_returns_the_known_optimum():
    # Loss indifferent to r, sharply U-shaped in d/√N about d = 896 (a grid width) at N = 1e8 (√N = 10^4): feasible
    # architectures have d = 896, and there the fastest under the cost model has one KV head; the staged
    # search finds what exhaustive search over width, r and n_kv_heads finds.
    law = dataclasses.replace(PLANTED, c_width=50.0, width_opt=896 / 1e4, c_ratio=0.0)
    params, tokens = 1e8, 2e9
    target = float(law.base(params * 0.9, tokens)) * 1.01
    space, cost = SearchSpace(ratios=(1.0, 2.0, 3.0, 4.0)), CostModel()
    best, seen = conditional.search(law, params, tokens, target, space, cost)
    assert best.arch.d_model == 896 and best.arch.n_kv_heads == 1 and best.loss <= target
    assert {c.arch.d_model for c in seen if c.loss <= target} == {896}
    arch, speed = exhaustive_optimum(law, params, tokens, target, space, cost)
    assert best.arch == arch and best.tokens_per_second == pytest.approx(speed)


def test_an_unreachable_target_is_an_error():
    with pytest.raises(ValueError, match="no architecture of N = 4e\\+06 reaches loss 1.0000"):
        conditional.search(PLANTED, 4e6, 8e7, 1.0)


def test_pareto_front_keeps_only_undominated_candidates():
    arch = Architecture(64, 1, 1, 1, 64)
    points = [(3.0, 10.0), (3.1, 30.0), (3.05, 5.0), (3.2, 20.0), (3.3, 40.0)]
    front = conditional.pareto_front([Candidate(arch, loss, speed) for loss, speed in points])
    assert [(c.loss, c.tokens_per_second) for c in front] == [(3.0, 10.0), (3.1, 30.0), (3.3, 40.0)]


def test_architecture_counts_match_llama_3_2_1b():
    # 16 layers, d 2048, 32 heads / 8 KV heads, SwiGLU d_ff 8192: 0.97e9 non-embedding weights, r ≈ 4.8.
    arch = Architecture(2048, 16, 32, 8, 8192)
    assert arch.params == 16 * (2 * 2048**2 + 2 * 2048 * 512 + 3 * 2048 * 8192)
    assert arch.ratio == pytest.approx(4.8)


def test_pareto_plot_writes_a_png(tmp_path):
    report = conditional.search_report(PLANTED, 1e7, 2e8)
    assert report["best"]["tokens_per_second"] >= report["baseline"]["tokens_per_second"]
    path = conditional.pareto_plot(report, tmp_path / "pareto.png", [(5.0, 100.0), (5.1, 200.0)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_includes_the_conditional_law_and_its_pareto_plot(capsys, runs, tmp_path):
    code, out, err = isoflop(capsys, "report", runs, "-o", tmp_path / "report", "--bootstrap", "0",
                             "--lbfgs-starts", "8")
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Architecture-conditional (Bian et al.)" in text and "![conditional_pareto.png]" in text
    assert (tmp_path / "report" / "conditional_pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_the_search_is_made_at_the_largest_model_of_the_largest_budget_with_the_runs_head_width(runs):
    from analysis.sources import Conventions, load_runs

    data = load_runs(runs, Conventions())
    at = conditional.search_point(data)
    top = data.budget == data.budget.max()
    assert data.budget[at] == data.budget.max() and data.params[at] == data.params[top].max()
    assert conditional.runs_head_dim(data) == 64  # the synthetic runs' heads are 64 wide
