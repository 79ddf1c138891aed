"""Formula values against published constants, and inference-aware sizing against the frontier it generalises."""

import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.laws import (
    HOFFMANN_2022, KAPLAN_2020, PF_DAY_FLOPS, ChinchillaLaw, effective_tokens, gadre_loss, gadre_optimal_multiplier,
    gadre_overtrain_penalty, kaplan_loss_c, kaplan_loss_d, kaplan_loss_n, kaplan_loss_nd,
)
from analysis.sizing import size, tokens_for_loss


def test_kaplan_published_constants_give_expected_losses():
    # (8.8e13 / 1e9)^0.076 = 88000^0.076; (5.4e13 / 1e10)^0.095 = 5400^0.095; worked by hand to 4 digits.
    assert kaplan_loss_n(1e9) == pytest.approx(2.3757, rel=1e-4)
    assert kaplan_loss_d(1e10) == pytest.approx(2.2624, rel=1e-4)
    assert kaplan_loss_c(1.0 * PF_DAY_FLOPS) == pytest.approx((3.1e8) ** 0.05, rel=1e-12)
    # L(N, D) tends to L(N) when data is unlimited, to L(D) when the model is.
    consts = dict(n_c=KAPLAN_2020["N_c"], d_c=KAPLAN_2020["D_c"], alpha_n=0.076, alpha_d=0.095)
    assert kaplan_loss_nd(1e9, 1e30, **consts) == pytest.approx(kaplan_loss_n(1e9), rel=1e-6)
    assert kaplan_loss_nd(1e30, 1e10, **consts) == pytest.approx(kaplan_loss_d(1e10), rel=1e-6)


def test_chinchilla_published_constants_give_expected_frontier():
    law = HOFFMANN_2022
    assert law.a == pytest.approx(0.28 / 0.62) and law.b == pytest.approx(0.34 / 0.62)
    assert law.a == pytest.approx(0.4516, abs=1e-4)  # Hoffmann Table 2 rounds approach 3 to 0.46 (unrounded fit)
    assert law.G == pytest.approx((0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62))
    flops = 5.76e23  # Chinchilla's own budget
    n_opt, d_opt = law.frontier(flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops)
    assert n_opt == pytest.approx(3.219e10, rel=1e-3)  # these constants put ~32B params, not 70B, at that budget
    # It is the minimum of L along the iso-FLOP curve.
    for factor in (0.8, 0.95, 1.05, 1.25):
        n = n_opt * factor
        assert law.loss(n, flops / (6 * n)) > law.loss(n_opt, d_opt)
    assert law.frontier_loss(flops) == pytest.approx(1.6900 + 406.4 / n_opt**0.34 + 410.7 / d_opt**0.28)


def test_gadre_optimum_and_penalty():
    E, a, b, eta = 1.8, 490.0, 1440.0, 0.166
    m_star = gadre_optimal_multiplier(a, b, eta)
    assert a * m_star**eta == pytest.approx(b * m_star**-eta)
    flops, grid = 1e21, np.geomspace(1, 1000, 2001)
    assert grid[np.argmin(gadre_loss(flops, grid, E, a, b, eta))] == pytest.approx(m_star, rel=0.01)
    assert gadre_overtrain_penalty(flops, m_star, a, b, eta) == pytest.approx(0, abs=1e-12)
    penalty = gadre_overtrain_penalty(flops, 8 * m_star, a, b, eta)
    assert penalty == pytest.approx(gadre_loss(flops, 8 * m_star, E, a, b, eta) - gadre_loss(flops, m_star, E, a, b, eta))
    assert penalty > 0


def test_effective_tokens_of_repeated_data():
    assert effective_tokens(1e9, 1.0) == pytest.approx(1e9)
    # Two epochs of 1e9 unique tokens: 1e9 + 1e9·R*(1 - e^(-1/R*)), a little under 2e9.
    assert effective_tokens(2e9, 2.0, 15.4) == pytest.approx(1e9 * (1 + 15.4 * (1 - math.exp(-1 / 15.4))))
    assert effective_tokens(1e12, 1000.0, 15.4) < 1e9 * 16.4 + 1  # saturates at U·(1 + R*)


def test_sizing_without_inference_is_the_chinchilla_frontier():
    law = HOFFMANN_2022
    result = size(law, inference_tokens=0.0, target_loss=2.0)
    plan = result.chinchilla
    n_opt, d_opt = law.frontier(plan.train_flops)
    assert plan.params == pytest.approx(n_opt, rel=1e-5) and plan.tokens == pytest.approx(d_opt, rel=1e-5)
    assert result.inference_optimal.params == pytest.approx(plan.params, rel=1e-5)
    assert result.flops_saved == pytest.approx(0, abs=1e-6 * plan.total_flops)


def test_sizing_with_inference_overtrains_a_smaller_model():
    law = HOFFMANN_2022
    result = size(law, inference_tokens=2e12, target_loss=2.0)
    chin, best = result.chinchilla, result.inference_optimal
    assert float(law.loss(best.params, best.tokens)) == pytest.approx(2.0, rel=1e-9)
    assert best.params < chin.params and best.tokens > chin.tokens
    assert result.overtrain_ratio > 1
    assert 0 < result.flops_saved < chin.total_flops
    assert chin.total_flops == pytest.approx(6 * chin.params * chin.tokens + 2 * chin.params * 2e12)
    # Optimal: a 2% larger or smaller model on the same loss curve costs more in total.
    for factor in (0.98, 1.02):
        n = best.params * factor
        total = 6 * n * float(tokens_for_loss(law, n, 2.0)) + 2 * n * 2e12
        assert total > best.total_flops


def test_sizing_from_a_budget_and_bad_targets():
    law = HOFFMANN_2022
    result = size(law, inference_tokens=1e12, budget_flops=5.76e23)
    assert result.chinchilla.train_flops == pytest.approx(5.76e23, rel=1e-6)
    assert result.target_loss == pytest.approx(float(law.frontier_loss(5.76e23)))
    with pytest.raises(AnalysisError, match="irreducible"):
        size(law, 1e12, target_loss=1.5)
    with pytest.raises(AnalysisError, match="exactly one"):
        size(law, 1e12)
    for budget in (0.0, math.inf, math.nan):
        with pytest.raises(AnalysisError, match="must be a finite number > 0"):
            size(ChinchillaLaw(1.0, 1.0, 1.0, 0.3, 0.3), 1e12, budget_flops=budget)
    for tokens in (-1.0, math.inf, math.nan):
        with pytest.raises(AnalysisError, match="--inference-tokens must be a finite number >= 0"):
            size(law, tokens, target_loss=2.0)


def test_sizing_refuses_targets_the_law_sizes_below_one_parameter_or_token():
    """Between E and E + min(A, B) every plan has N > 1 and D > 1; above it the law is refused, not extrapolated."""
    law = HOFFMANN_2022
    ceiling = law.E + min(law.A, law.B)
    near = size(law, 1e12, target_loss=ceiling * 0.999)
    for plan in (near.chinchilla, near.inference_optimal):
        assert plan.params > 1 and plan.tokens > 1
    for target in (ceiling, 1e308):
        with pytest.raises(AnalysisError, match="not below E \\+ min\\(A, B\\)"):
            size(law, 1e12, target_loss=target)
    with pytest.raises(AnalysisError, match="--budget 1e-05.*not below E"):
        size(law, 1e12, budget_flops=1e-5)
    with pytest.raises(AnalysisError, match="overflows the float range"):
        size(law, 1e300, target_loss=2.0)
