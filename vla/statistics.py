"""Uncertainty of success rates: every rate an evaluation reports comes with its 95% interval."""

from __future__ import annotations

from collections.abc import Sequence

CONFIDENCE = 0.95


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial success rate (well behaved at 0/n and n/n, unlike the normal
    approximation); (0, 1) when nothing was tried."""
    if trials <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def format_rate(rate: float, interval: Sequence[float] | None) -> str:
    """'76.7% [59.1, 88.2]' (the interval in percent), or just the rate when there is none."""
    if not interval:
        return f"{rate:.1%}"
    return f"{rate:.1%} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
