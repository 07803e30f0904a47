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

Each statistic has a minimum sample size (MINIMUMS, below; docs/verdict.md says why). Below it
the value is still reported where it is defined, but `enough` is false, `excludes_zero` null and
the verdict is not drawn. A value that cannot be computed (the SE of one example) is None, never
NaN: the report is strict JSON.
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

# The fewest observations each statistic is used with, the one place they are set. Examples: a
# percentile bootstrap of a mean undercovers on small sets of skewed per-example differences (in
# a simulation, a 95% interval covered the truth 80% of the time at 5 examples, 91% at 10, 93% at
# 20, 95% at 30) and the minimum detectable effect uses the normal approximation; an arm's eval
# loss against a success criterion rests on the same examples. Replicates: the seed-level t
# interval needs an sd, so two; with two it has 1 degree of freedom (t = 12.7) and says so.
MIN_EXAMPLES = 30
MIN_REPLICATES = 2
MINIMUMS = {"paired": MIN_EXAMPLES, "criteria": MIN_EXAMPLES, "seed_spread": MIN_REPLICATES}


@dataclass(frozen=True)
class Paired:
    """One paired comparison over n examples (differences are experiment - control)."""

    n: int
    mean_diff: float
    ci_low: float | None  # None for one example (no interval)
    ci_high: float | None
    se: float | None  # None for one example
    share_better: float  # experiment loss lower
    share_worse: float
    mde: float | None  # minimum detectable |mean difference| at POWER, two-sided 1 - CONFIDENCE
    control_mean: float
    experiment_mean: float

    @property
    def enough(self) -> bool:
        """Enough examples (MIN_EXAMPLES) for the interval to mean what it says."""
        return self.n >= MIN_EXAMPLES

    @property
    def excludes_zero(self) -> bool | None:
        """None below MIN_EXAMPLES: too few examples to say."""
        if not self.enough or self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "confidence": CONFIDENCE, "power": POWER,
                "excludes_zero": self.excludes_zero, "enough": self.enough,
                "min_examples": MIN_EXAMPLES}


@dataclass(frozen=True)
class SeedSpread:
    """How much the result moves between replicates (needs two or more)."""

    replicates: int  # degrees of freedom of the t interval: replicates - 1
    diffs: list[float]  # each replicate's mean difference
    diff_sd: float
    diff_se: float
    ci_low: float
    ci_high: float
    control_sd: float  # seed-to-seed standard deviation of each arm's mean eval loss
    experiment_sd: float

    @property
    def df(self) -> int:
        return self.replicates - 1

    @property
    def stands_out(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "confidence": CONFIDENCE, "stands_out": self.stands_out,
                "df": self.df, "t": float(sps.t.ppf(1 - (1 - CONFIDENCE) / 2, self.df)),
                "min_replicates": MIN_REPLICATES}


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
    se = paired_se(d) if d.size > 1 else None
    low, high = bootstrap_ci(d, resamples=resamples, seed=seed) if d.size > 1 else (None, None)
    return Paired(
        n=int(d.size), mean_diff=float(d.mean()), ci_low=low, ci_high=high, se=se,
        share_better=float(np.mean(d < 0)), share_worse=float(np.mean(d > 0)),
        mde=minimum_detectable_effect(se) if se is not None else None,
        control_mean=float(c.mean()), experiment_mean=float(e.mean()),
    )


def seed_spread(controls: list, experiments: list) -> SeedSpread:
    """Seed-to-seed spread from R >= 2 replicates' per-example losses (same examples in each)."""
    if len(controls) != len(experiments) or len(controls) < MIN_REPLICATES:
        raise ValueError(f"seed spread needs {MIN_REPLICATES} or more replicates of both arms")
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
    spread = seed_spread(controls, experiments) if len(controls) >= MIN_REPLICATES else None
    return overall, spread


def mean_sd(values) -> tuple[float, float | None]:
    """Mean and (for two or more values) sample standard deviation."""
    a = _clean(values)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else None
