"""The data-constrained law whole (Muennighoff et al. 2023): both decay constants, R_D* for repeated tokens
and R_N* for parameters in excess of N_opt(U), recovered from runs drawn from a planted law, and the fit's
JSON predicting through `isoflop predict`."""

import json

import numpy as np
import pytest

from analysis.laws import HOFFMANN_2022, DataConstrainedLaw
from analysis.synthetic import noisy, write_csv
from cli_run import isoflop

LAW = DataConstrainedLaw(**HOFFMANN_2022.as_dict(), R_D_star=15.4, R_N_star=5.3)


def runs(excess=(0.5, 2.0, 6.0, 20.0)):
    """Single-epoch runs at or past their compute-optimal tokens (no excess parameters), and runs repeating
    U unique tokens with N from `excess` times N_opt(U)."""
    base = LAW.base
    single_n = np.repeat(np.geomspace(2e7, 2e9, 8), 4)
    single_d = (single_n / base.G) ** (base.alpha / base.beta) / base.G * np.tile([1.0, 3.0, 10.0, 30.0], 8)
    unique = np.repeat([1e9, 3e9, 1e10], 4 * len(excess))
    repeated_n = base.params_for_tokens(unique) * np.tile(np.repeat(excess, 4), 3)
    epochs = np.tile([2.0, 5.0, 15.0, 40.0], 3 * len(excess))
    params, tokens = np.r_[single_n, repeated_n], np.r_[single_d, unique * epochs]
    epochs = np.r_[np.ones(len(single_n)), epochs]
    return params, tokens, epochs


def table(path, excess=(0.5, 2.0, 6.0, 20.0), noise=0.0):
    params, tokens, epochs = runs(excess)
    loss = LAW.loss(params, tokens, tokens / epochs)
    return write_csv(path, {"params": params, "tokens": tokens, "epochs": epochs,
                            "loss": noisy(loss, noise, 0) if noise else loss})


def fit(capsys, path, *argv):
    code, out, err = isoflop(capsys, "fit", path, "--approach", "datacon", "--bootstrap", "0", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def test_both_decay_constants_recovered_from_the_planted_law(capsys, tmp_path):
    result = fit(capsys, table(tmp_path / "dc.csv"))
    assert result["R_D_star"] == pytest.approx(15.4, rel=1e-4)
    assert result["R_N_star"] == pytest.approx(5.3, rel=1e-4)
    assert result["alpha"] == pytest.approx(HOFFMANN_2022.alpha, rel=1e-4)
    assert result["details"]["n_excess_params"] == 36


def test_both_decay_constants_with_noise_and_intervals(capsys, tmp_path):
    code, out, err = isoflop(capsys, "fit", table(tmp_path / "noisy.csv", noise=0.002), "--approach", "datacon",
                             "--bootstrap", "20", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["R_D_star"] == pytest.approx(15.4, rel=0.25)
    assert result["R_N_star"] == pytest.approx(5.3, rel=0.25)
    low, high = result["ci95"]["R_N_star"]
    assert low < result["R_N_star"] < high


def test_without_excess_parameters_r_n_is_not_estimated(capsys, tmp_path):
    result = fit(capsys, table(tmp_path / "no_excess.csv", excess=(0.3, 0.6)))
    assert "R_N_star" not in result and result["R_D_star"] == pytest.approx(15.4, rel=1e-4)
    assert any("R_N* not estimated" in note for note in result["notes"])


def test_the_fit_predicts_through_isoflop_predict(capsys, tmp_path):
    law_file = tmp_path / "datacon.json"
    law_file.write_text(json.dumps(fit(capsys, table(tmp_path / "dc.csv"))))
    code, out, err = isoflop(capsys, "predict", "--law", law_file, "--params", 4e9, "--tokens", 1e11,
                             "--unique-tokens", 1e10, "--json")
    assert code == 0, err
    assert json.loads(out)["loss"] == pytest.approx(float(LAW.loss(4e9, 1e11, 1e10)), rel=1e-6)
