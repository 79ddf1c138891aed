"""`isoflop predict` and `isoflop size --law NAME` with the published laws: the papers' own check values,
the formulas by construction, and `size --target-params` (Sardana & Frankle's reference-model target)."""

import json

import pytest

from analysis.laws import PF_DAY_FLOPS, ChinchillaLaw
from analysis.presets import PRESETS
from cli_run import isoflop


def predicted(capsys, *argv) -> dict:
    code, out, err = isoflop(capsys, "predict", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("params, tokens, unique, published", [
    # github.com/huggingface/datablations README, "Parametric Fit": the models of the paper's Figure 1 (right).
    (6.34e9, 242e9, 25e9, 2.2256440889984477),
    (8.67e9, 178e9, 25e9, 2.2269634075087867),
])
def test_muennighoff_preset_gives_the_published_check_values(capsys, params, tokens, unique, published):
    result = predicted(capsys, "--law", "muennighoff2023", "--params", params, "--tokens", tokens,
                       "--unique-tokens", unique)
    assert result["loss"] == pytest.approx(published, rel=1e-12)
    assert result["law"]["R_N_star"] == 5.309743 and result["law"]["R_D_star"] == 15.387756


def test_muennighoff_without_repetition_is_its_chinchilla_form(capsys):
    law = PRESETS["muennighoff2023"].law
    n, d = 1e9, 20e9  # N below N_opt(D): no excess parameters either
    result = predicted(capsys, "--law", "muennighoff2023", "--params", n, "--tokens", d)
    assert result["loss"] == pytest.approx(law.E + law.A / n**law.alpha + law.B / d**law.beta, rel=1e-12)


@pytest.mark.parametrize("name, constants", [
    ("hoffmann2022", (1.69, 406.4, 410.7, 0.34, 0.28)),
    ("hoffmann2022-tex", (1.6934, 406.4, 410.7, 0.3392, 0.2849)),
    ("besiroglu2024", (1.8172, 482.01, 2085.43, 0.3478, 0.3658)),
])
def test_chinchilla_form_presets_by_formula(capsys, name, constants):
    e, a, b, alpha, beta = constants
    n, d = 70e9, 1.4e12  # Chinchilla itself
    result = predicted(capsys, "--law", name, "--params", n, "--tokens", d)
    assert result["loss"] == pytest.approx(e + a / n**alpha + b / d**beta, rel=1e-12)
    assert predicted(capsys, "--law", name, "--params", n, "--flops", 6 * n * d)["loss"] == pytest.approx(result["loss"])
    law = ChinchillaLaw(*constants)
    optimal = predicted(capsys, "--law", name, "--flops", 5.76e23)
    assert optimal["loss"] == pytest.approx(float(law.frontier_loss(5.76e23)), rel=1e-12)
    assert optimal["inputs"]["params"] * optimal["inputs"]["tokens"] * 6 == pytest.approx(5.76e23)


def test_kaplan_preset_uses_whichever_input_is_given(capsys):
    assert predicted(capsys, "--law", "kaplan2020", "--params", 1e9)["loss"] == pytest.approx((8.8e13 / 1e9) ** 0.076)
    assert predicted(capsys, "--law", "kaplan2020", "--tokens", 1e10)["loss"] == pytest.approx((5.4e13 / 1e10) ** 0.095)
    result = predicted(capsys, "--law", "kaplan2020", "--flops", PF_DAY_FLOPS)
    assert result["loss"] == pytest.approx(3.1e8**0.05) and "L(C_min)" in result["formula"]


def test_text_output_cites_the_paper(capsys):
    code, out, err = isoflop(capsys, "predict", "--law", "besiroglu2024", "--params", 1e9, "--tokens", 2e10)
    assert code == 0, err
    assert out.startswith("L = ") and "arXiv:2404.10102" in out


def test_predict_from_a_fit_json(capsys, tmp_path):
    law = tmp_path / "law.json"
    law.write_text(json.dumps({"E": 2.0, "A": 400.0, "B": 400.0, "alpha": 0.3, "beta": 0.3}))
    assert predicted(capsys, "--law", law, "--params", 1e8, "--tokens", 1e8)["loss"] == pytest.approx(
        2 + 800 / 1e8**0.3)


@pytest.mark.parametrize("argv, message", [
    (("--law", "kaplan2020", "--params", "1e9", "--tokens", "1e10"), "kaplan2020 predicts from exactly one of"),
    (("--law", "hoffmann2022", "--params", "1e9", "--tokens", "1e10", "--unique-tokens", "1e9"),
     "--unique-tokens needs a data-constrained law"),
    (("--law", "hoffmann2022", "--params", "1e9", "--tokens", "1e10", "--flops", "6e19"), "give two of --params"),
    (("--law", "hoffmann2022"), "give --params and --tokens"),
    (("--law", "muennighoff2023", "--params", "1e9", "--tokens", "1e9", "--unique-tokens", "2e9"),
     "--unique-tokens 2e+09 exceeds the training tokens 1e+09"),
    (("--law", "nosuchlaw", "--params", "1e9"), "--law nosuchlaw: No such file or directory (expected a FIT.json from `isoflop fit --approach 3 --json`, or one of kaplan2020"),
    (("--law", "hoffmann2022", "--params", "-1", "--tokens", "1e9"), "argument --params: must be a finite number > 0"),
])
def test_bad_predictions_are_one_line_exit_2(capsys, argv, message):
    code, out, err = isoflop(capsys, "predict", *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_size_target_params_is_the_compute_optimal_model_of_that_size(capsys):
    code, out, err = isoflop(capsys, "size", "--law", "hoffmann2022", "--target-params", 13e9,
                             "--inference-tokens", 2e12, "--json")
    assert code == 0, err
    result = json.loads(out)
    law = PRESETS["hoffmann2022"].law
    plan = result["chinchilla_optimal"]
    assert plan["params"] == pytest.approx(13e9, rel=1e-5)
    n_opt, _ = law.frontier(plan["train_flops"])
    assert n_opt == pytest.approx(13e9, rel=1e-5)  # it is compute-optimal at its own budget
    assert result["target_loss"] == pytest.approx(float(law.frontier_loss(plan["train_flops"])), rel=1e-9)
    assert result["inference_optimal"]["params"] < 13e9


def test_size_accepts_presets_of_hoffmann_form_only(capsys):
    code, out, err = isoflop(capsys, "size", "--law", "muennighoff2023", "--budget", 1e21, "--inference-tokens", 1e12)
    assert code == 0 and "without repetition" in out, err
    code, out, err = isoflop(capsys, "size", "--law", "kaplan2020", "--budget", 1e21, "--inference-tokens", 1e12)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sizing needs an L(N, D)" in err
