"""`isoflop ladder`: each step fitted in its own FLOP count; the exponents of planted laws come back."""

import json

import numpy as np
import pytest

from analysis.laws import ChinchillaLaw
from analysis.synthetic import isoflop_grid, noisy, write_run_dirs
from tests.cli_run import isoflop

BUDGETS = [1e18, 1e19, 1e20]


def planted(alpha: float, beta: float) -> ChinchillaLaw:
    return ChinchillaLaw(E=1.7, A=400.0, B=410.0, alpha=alpha, beta=beta)


def write_step(root, law: ChinchillaLaw, seed: int):
    params, tokens, flops = isoflop_grid(law, BUDGETS, sizes_per_budget=7, span_decades=1.0)
    write_run_dirs(root, params, tokens, noisy(law.loss(params, tokens), 0.002, seed), budget=flops)
    return law.beta / (law.alpha + law.beta)  # a = β/(α+β) (Hoffmann et al. 2022)


@pytest.fixture
def two_steps(tmp_path):
    kaplan_like = write_step(tmp_path / "a", planted(0.28, 0.40), seed=1)
    chinchilla_like = write_step(tmp_path / "b", planted(0.34, 0.34), seed=2)
    return tmp_path, kaplan_like, chinchilla_like


def test_each_step_recovers_its_exponent_and_writes_table_json_figure(two_steps, capsys):
    root, a_first, a_second = two_steps
    out_dir = root / "ladder"
    code, out, err = isoflop(capsys, "ladder", "--step", "(a) first", root / "a", "6N",
                             "--step", "(b) second", root / "b", "chinchilla", "--bootstrap", 50, "-o", out_dir)
    assert code == 0, err
    result = json.loads((out_dir / "ladder.json").read_text())
    fitted = [step["approach2"]["a"] for step in result["steps"]]
    assert fitted == pytest.approx([a_first, a_second], abs=0.02)
    assert [step["flops"] for step in result["steps"]] == ["6N", "chinchilla"]
    assert result["steps"][1]["approach2"]["conventions"]["flops"] == "chinchilla"  # fitted in its own count
    low, high = result["steps"][0]["approach2"]["ci95"]["a"]
    assert low <= fitted[0] <= high and high - low < 0.1
    assert (out_dir / "ladder.png").stat().st_size > 10_000
    markdown = (out_dir / "ladder.md").read_text()
    assert "(a) first" in markdown and "isoflop ladder --step" in markdown and "ladder.png" in markdown
    assert "(b) second" in out


@pytest.mark.parametrize("argv, message", [
    (["--step", "x", "{root}/a", "7N"], "flops"),
    (["--step", "x", "{root}/missing", "6N"], "missing"),
])
def test_bad_steps_are_one_line_and_write_nothing(two_steps, capsys, argv, message):
    root, *_ = two_steps
    out_dir = root / "ladder"
    code, out, err = isoflop(capsys, "ladder", *[arg.format(root=root) for arg in argv], "-o", out_dir)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("isoflop ladder:") and message in err
    assert not out_dir.exists()


def test_a_step_without_enough_budgets_names_the_step(tmp_path, capsys):
    law = planted(0.34, 0.34)
    params, tokens, flops = isoflop_grid(law, BUDGETS[:1], sizes_per_budget=5)
    write_run_dirs(tmp_path / "one", params, tokens, law.loss(params, tokens), budget=flops)
    code, _, err = isoflop(capsys, "ladder", "--step", "lonely", tmp_path / "one", "6N", "--bootstrap", 0,
                           "-o", tmp_path / "out")
    assert code == 2 and "lonely" in err and err.count("\n") == 1
