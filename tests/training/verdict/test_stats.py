"""The verdict's statistics on constructed per-example losses, where the answer is known."""

import json
import math

import numpy as np
import pytest

from training.verdict import stats


def losses(n=200, seed=1):
    """Per-example losses that vary a lot between examples (as real eval sets do)."""
    rng = np.random.default_rng(seed)
    return rng.gamma(4.0, 0.5, n) + 1.0


def test_a_known_shift_is_found_and_covered():
    control = losses()
    noise = np.random.default_rng(2).normal(0, 0.1, control.size)
    experiment = control - 0.05 + noise  # the experiment is better by 0.05 on average
    p = stats.paired(control, experiment)
    assert p.ci_low <= np.mean(experiment - control) <= p.ci_high
    assert p.ci_high < 0 and p.excludes_zero
    assert abs(p.mean_diff - np.mean(experiment - control)) < 1e-12
    assert p.ci_low < -0.05 < p.ci_high
    assert p.share_better > 0.6
    # the analytic SE and the bootstrap agree: a 95% interval is about +-1.96 SE wide
    assert (p.ci_high - p.ci_low) / (2 * 1.96 * p.se) == pytest.approx(1.0, abs=0.1)
    assert p.se == pytest.approx(np.std(experiment - control, ddof=1) / math.sqrt(200))


def test_the_interval_covers_the_truth_about_95_percent_of_the_time():
    hits = 0
    for seed in range(200):
        c = losses(60, seed)
        e = c + 0.1 + np.random.default_rng(1000 + seed).normal(0, 0.3, 60)
        lo, hi = stats.bootstrap_ci(e - c, resamples=2000, seed=seed)
        hits += lo <= 0.1 <= hi
    assert 0.89 <= hits / 200 <= 0.99  # percentile bootstrap: slightly under 95% at n=60


def test_identical_arms_give_an_interval_around_zero():
    c = losses()
    p = stats.paired(c, c.copy())
    assert (p.mean_diff, p.ci_low, p.ci_high, p.se) == (0, 0, 0, 0)
    assert not p.excludes_zero and p.share_better == p.share_worse == 0
    # two arms that differ only by noise: an interval that contains zero
    e = c + np.random.default_rng(5).normal(0, 0.2, c.size)
    e -= np.mean(e - c)  # exactly no difference on average
    q = stats.paired(c, e)
    assert q.ci_low < 0 < q.ci_high and not q.excludes_zero


def test_bootstrap_is_seeded_and_reproducible():
    d = losses(100) - losses(100, 7)
    assert stats.bootstrap_ci(d) == stats.bootstrap_ci(d)
    assert stats.bootstrap_ci(d, seed=1) != stats.bootstrap_ci(d, seed=2)


def test_minimum_detectable_effect_shrinks_with_the_eval_set():
    small = stats.paired(losses(25), losses(25) + 0.01)
    d = np.random.default_rng(3).normal(0, 1, 10_000)
    assert stats.minimum_detectable_effect(0.1) == pytest.approx((1.959964 + 0.841621) * 0.1)
    big = stats.paired(np.zeros(10_000), d)
    assert big.mde == pytest.approx(2.8016 / 100, rel=0.02)  # sd 1, n 10,000
    assert small.mde > 0 and big.mde < 0.03


def test_unequal_lengths_and_non_finite_losses_are_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        stats.paired([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-empty"):
        stats.paired([], [])


def test_replicates_are_averaged_and_their_spread_measured():
    base = losses(100)
    rng = np.random.default_rng(11)
    # each replicate shifts both arms by its own seed effect; the data effect is -0.2
    seeds = [0.3, -0.1, 0.05]
    controls = [base + s + rng.normal(0, 0.05, 100) for s in seeds]
    experiments = [base + s - 0.2 + 0.02 * i + rng.normal(0, 0.05, 100)
                   for i, s in enumerate(seeds)]
    overall, spread = stats.aggregate(controls, experiments)
    assert overall.n == 100
    expected = np.mean([np.mean(e - c) for c, e in zip(controls, experiments, strict=True)])
    assert overall.mean_diff == pytest.approx(expected)
    assert overall.ci_low < -0.18 < overall.ci_high or overall.ci_high < 0
    assert spread.replicates == 3 and len(spread.diffs) == 3
    # the arms' own means move with the seed (sd about 0.2); their difference barely does
    assert spread.control_sd == pytest.approx(np.std(seeds, ddof=1), abs=0.02)
    assert spread.diff_sd < 0.05 and spread.stands_out
    assert spread.ci_high < 0


def test_a_seed_spread_larger_than_the_effect_does_not_stand_out():
    base = losses(100)
    controls = [base, base + 0.1]
    experiments = [base - 0.3, base + 0.35]  # replicate diffs -0.3 and +0.25
    overall, spread = stats.aggregate(controls, experiments)
    assert overall.mean_diff == pytest.approx((-0.3 + 0.25) / 2)
    assert not spread.stands_out
    assert spread.ci_low < 0 < spread.ci_high


def test_one_replicate_has_no_seed_spread_and_replicates_must_match():
    c, e = losses(10), losses(10, 3)
    overall, spread = stats.aggregate([c], [e])
    assert spread is None and overall.n == 10
    with pytest.raises(ValueError, match="same examples"):
        stats.aggregate([c, c[:5]], [e, e[:5]])
    assert stats.mean_sd([1.0]) == (1.0, None)
    assert stats.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_dicts_carry_the_fields_the_report_documents():
    p = stats.paired(losses(30), losses(30, 4)).to_dict()
    assert {"n", "mean_diff", "ci_low", "ci_high", "se", "share_better", "share_worse", "mde",
            "control_mean", "experiment_mean", "confidence", "power", "excludes_zero", "enough",
            "min_examples"} == p.keys()
    _, spread = stats.aggregate([losses(30), losses(30, 5)], [losses(30, 6), losses(30, 7)])
    assert {"replicates", "diffs", "diff_sd", "diff_se", "ci_low", "ci_high", "control_sd",
            "experiment_sd", "confidence", "stands_out", "df", "t",
            "min_replicates"} == spread.to_dict().keys()


# ----------------------------------------------------------------------------- too little data
def test_the_minimum_sample_sizes_are_stated_in_one_place():
    assert stats.MINIMUMS == {"paired": stats.MIN_EXAMPLES, "criteria": stats.MIN_EXAMPLES,
                              "seed_spread": stats.MIN_REPLICATES}
    assert stats.MIN_EXAMPLES >= 20 and stats.MIN_REPLICATES == 2


def test_one_example_has_no_interval_no_se_and_is_never_significant():
    p = stats.paired([2.0], [1.0])  # "experiment is better" by a whole nat, on one example
    assert p.n == 1 and p.mean_diff == -1.0
    assert (p.ci_low, p.ci_high, p.se, p.mde) == (None, None, None, None)  # not a zero-width CI
    assert p.excludes_zero is None and not p.enough
    d = p.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON: null, never NaN
    assert d["se"] is None and d["excludes_zero"] is None and d["enough"] is False


@pytest.mark.parametrize("n", [2, 5, 29])
def test_below_the_minimum_a_clear_shift_is_not_called_significant(n):
    c = losses(n)
    p = stats.paired(c, c - 0.5)  # every example better by 0.5: the interval excludes zero
    assert p.ci_high < 0 and p.se is not None
    assert p.excludes_zero is None and not p.enough
    q = stats.paired(losses(30), losses(30) - 0.5)
    assert q.enough and q.excludes_zero is True


def test_two_replicates_give_a_t_interval_with_one_degree_of_freedom():
    base = losses(40)
    _, two = stats.aggregate([base, base + 0.01], [base - 0.2, base - 0.25])
    assert two.df == 1 and two.to_dict()["t"] == pytest.approx(12.706, abs=1e-3)
    half = (two.ci_high - two.ci_low) / 2
    assert half == pytest.approx(12.706 * two.diff_se, rel=1e-3)
    _, five = stats.aggregate([base + 0.01 * k for k in range(5)],
                              [base - 0.2 - 0.01 * k for k in range(5)])
    assert five.df == 4 and five.to_dict()["t"] == pytest.approx(2.776, abs=1e-3)
