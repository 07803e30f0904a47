"""The statistics of the verdict: paired differences of per-example eval losses (pure, no I/O).

Both arms are evaluated on the same examples, so each example gives one paired difference
d_i = experiment loss - control loss (negative: the experiment model is better on it). The pair is
summarised the way Miller, "Adding Error Bars to Evals" (2024) recommends for paired evaluations:

- the mean difference, with a 95% interval from a paired bootstrap over examples (seeded, so the
  same data gives the same interval) and the analytic paired standard error sd(d) / sqrt(n);
- the share of examples on which the experiment is better;
- the minimum detectable effect: the smallest true mean difference this eval set would detect at
  80% power with a two-sided 5% test, (z_0.975 + z_0.8) * SE, so a user sees when the set is too
  small to find the effect they care about.

With seed replicates (the pair trained again with other seeds) the per-example differences are
averaged over replicates before the bootstrap, and the spread of the replicates' mean differences
gives a second, seed-level interval (Student t with R-1 degrees of freedom): the data effect
"stands out of the seed noise" when that interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
POWER = 0.80
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Paired:
    """One paired comparison over n examples (differences are experiment - control)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    se: float
    share_better: float  # experiment loss lower
    share_worse: float
    mde: float  # minimum detectable |mean difference| at POWER, two-sided 1 - CONFIDENCE
    control_mean: float
    experiment_mean: float

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "confidence": CONFIDENCE, "power": POWER,
                "excludes_zero": self.excludes_zero}


@dataclass(frozen=True)
class SeedSpread:
    """How much the result moves between replicates (needs two or more)."""

    replicates: int
    diffs: list[float]  # each replicate's mean difference
    diff_sd: float
    diff_se: float
    ci_low: float
    ci_high: float
    control_sd: float  # seed-to-seed standard deviation of each arm's mean eval loss
    experiment_sd: float

    @property
    def stands_out(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "confidence": CONFIDENCE, "stands_out": self.stands_out}


def _clean(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("expected a non-empty 1-D sequence of numbers")
    if not np.all(np.isfinite(a)):
        raise ValueError("losses must be finite")
    return a


def paired_se(diffs) -> float:
    """Analytic standard error of the mean paired difference: sd(d, ddof=1) / sqrt(n)."""
    d = _clean(diffs)
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan


def bootstrap_ci(diffs, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = SEED) -> tuple[float, float]:
    """Percentile interval of the mean of d from `resamples` bootstrap resamples of the examples
    (resampling differences keeps each example's two losses together: a paired bootstrap)."""
    d = _clean(diffs)
    if d.size < 2 or np.all(d == d[0]):  # no spread: every resample has the same mean
        m = float(d.mean())
        return m, m
    res = sps.bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=confidence,
                        method="percentile", vectorized=True, batch=max(1, 2_000_000 // d.size),
                        rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def minimum_detectable_effect(se: float, *, power: float = POWER,
                              confidence: float = CONFIDENCE) -> float:
    """Smallest true mean difference a two-sided test at 1 - confidence finds with `power`."""
    z = sps.norm.ppf(1 - (1 - confidence) / 2) + sps.norm.ppf(power)
    return float(z * se)


def paired(control, experiment, *, resamples: int = RESAMPLES, seed: int = SEED) -> Paired:
    """The paired comparison of two equally long sequences of per-example losses."""
    c, e = _clean(control), _clean(experiment)
    if c.size != e.size:
        raise ValueError(f"paired losses need equal lengths, got {c.size} and {e.size}")
    d = e - c
    se = paired_se(d)
    low, high = bootstrap_ci(d, resamples=resamples, seed=seed)
    return Paired(
        n=int(d.size), mean_diff=float(d.mean()), ci_low=low, ci_high=high, se=se,
        share_better=float(np.mean(d < 0)), share_worse=float(np.mean(d > 0)),
        mde=minimum_detectable_effect(se) if math.isfinite(se) else math.nan,
        control_mean=float(c.mean()), experiment_mean=float(e.mean()),
    )


def seed_spread(controls: list, experiments: list) -> SeedSpread:
    """Seed-to-seed spread from R >= 2 replicates' per-example losses (same examples in each)."""
    if len(controls) != len(experiments) or len(controls) < 2:
        raise ValueError("seed spread needs two or more replicates of both arms")
    c_means = np.array([_clean(c).mean() for c in controls])
    e_means = np.array([_clean(e).mean() for e in experiments])
    diffs = e_means - c_means
    r = diffs.size
    sd = float(diffs.std(ddof=1))
    se = sd / math.sqrt(r)
    half = float(sps.t.ppf(1 - (1 - CONFIDENCE) / 2, r - 1)) * se
    mean = float(diffs.mean())
    return SeedSpread(replicates=r, diffs=[float(x) for x in diffs], diff_sd=sd, diff_se=se,
                      ci_low=mean - half, ci_high=mean + half,
                      control_sd=float(c_means.std(ddof=1)),
                      experiment_sd=float(e_means.std(ddof=1)))


def aggregate(controls: list, experiments: list, *, resamples: int = RESAMPLES,
              seed: int = SEED) -> tuple[Paired, SeedSpread | None]:
    """All replicates together: the per-example losses averaged over replicates, compared
    pairwise; plus the seed spread when there are two or more replicates."""
    if not controls or len(controls) != len(experiments):
        raise ValueError("need the same number (>= 1) of control and experiment replicates")
    sizes = {np.asarray(x).size for x in (*controls, *experiments)}
    if len(sizes) != 1:
        raise ValueError(f"replicates must cover the same examples, got sizes {sorted(sizes)}")
    c = np.mean([_clean(x) for x in controls], axis=0)
    e = np.mean([_clean(x) for x in experiments], axis=0)
    overall = paired(c, e, resamples=resamples, seed=seed)
    return overall, seed_spread(controls, experiments) if len(controls) > 1 else None


def mean_sd(values) -> tuple[float, float | None]:
    """Mean and (for two or more values) sample standard deviation."""
    a = _clean(values)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else None
