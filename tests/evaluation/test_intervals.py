import numpy as np
import pytest
import sacrebleu
from scipy import stats

from mossa.errors import MossaError
from mossa.evaluation import metric_interval, paired_gain_interval, wilson_interval
from mossa.evaluation._metrics import mean_scores, ratio_scores, sacrebleu_scores


def test_wilson_known_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)  # Wilson 1927; statsmodels "wilson"
    for k, n in [(0, 48), (30, 48), (48, 48), (90, 96)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    z2 = stats.norm.ppf(0.975) ** 2
    assert wilson_interval(48, 48)[0] == pytest.approx(48 / (48 + z2))  # all correct: still informative
    assert wilson_interval(0, 48)[0] == 0.0 and wilson_interval(48, 48)[1] == 1.0
    assert np.isnan(wilson_interval(0, 0)[0])


def test_share_uses_wilson_and_all_correct_is_not_a_point():
    iv = metric_interval(mean_scores("accuracy", np.arange(48), np.ones(48)), n_boot=200, rng=0)
    assert iv.method == "wilson" and iv.high == 1.0 and iv.low == pytest.approx(0.9259, abs=1e-4)


def test_degenerate_cases_are_reported():
    const = metric_interval(mean_scores("rougeL", np.arange(10), np.full(10, 0.4)), n_boot=200, rng=0)
    assert const.low == const.high == pytest.approx(0.4) and const.method == "constant"
    empty = metric_interval(mean_scores("rougeL", np.arange(0), np.zeros(0)), n_boot=200, rng=0)
    assert np.isnan(empty.low) and np.isnan(empty.high) and empty.method == "no examples"
    none = metric_interval(mean_scores("rougeL", np.arange(3), [0.1, 0.2, 0.3]), n_boot=0, rng=0)
    assert np.isnan(none.low) and none.method == "none"
    one_differs = metric_interval(mean_scores("rougeL", np.arange(20), [0.5] + [0.0] * 19), n_boot=200, rng=0)
    assert one_differs.low <= 0.025 <= one_differs.high  # still an interval, whatever the method says


def test_bootstrap_mean_is_seeded_and_brackets_the_value():
    rng = np.random.default_rng(1)
    s = mean_scores("rougeL", np.arange(48), rng.beta(2, 5, 48))
    a, b = metric_interval(s, n_boot=200, rng=5), metric_interval(s, n_boot=200, rng=5)
    assert a == b and a.method == "bootstrap percentile" and a.low < s.value < a.high
    assert metric_interval(s, n_boot=200, rng=6) != a


def test_corpus_bootstrap_resamples_sacrebleu_statistics():
    rng = np.random.default_rng(0)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "in", "mat", "park", "house", "big", "small"]
    refs = [" ".join(rng.choice(words, 10)) for _ in range(40)]
    hyps = [" ".join(w if rng.random() < 0.6 else str(rng.choice(words)) for w in r.split()) for r in refs]
    for name, corpus in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        s = sacrebleu_scores(name, np.arange(40), hyps, refs)
        assert s.value == pytest.approx(corpus(hyps, [refs]).score, abs=1e-12)
        iv = metric_interval(s, n_boot=200, rng=0)
        assert iv.method.startswith("bootstrap") and iv.low < s.value < iv.high


def test_paired_gain_clear_gain_and_no_gain():
    rng = np.random.default_rng(3)
    base = (rng.random(96) < 0.4).astype(float)
    better = np.where(rng.random(96) < 0.6, 1.0, base)
    rows = np.arange(96)
    clear = paired_gain_interval(mean_scores("accuracy", rows, base), mean_scores("accuracy", rows, better),
                                 n_boot=500, rng=0)
    assert clear.low > 0 and clear.method == "bootstrap percentile"
    shuffled = np.where(rng.random(96) < 0.5, base, rng.permutation(base))  # same accuracy, different rows
    nothing = paired_gain_interval(mean_scores("accuracy", rows, base), mean_scores("accuracy", rows, shuffled),
                                   n_boot=500, rng=0)
    assert nothing.low < 0 < nothing.high
    same = paired_gain_interval(mean_scores("accuracy", rows, base), mean_scores("accuracy", rows, base),
                                n_boot=500, rng=0)
    assert same == (0.0, 0.0, "constant")


def test_paired_gain_needs_the_same_rows():
    a = mean_scores("accuracy", np.arange(3), [1, 0, 1])
    b = mean_scores("accuracy", np.array([0, 1, 5]), [1, 1, 1])
    with pytest.raises(MossaError, match="same rows"):
        paired_gain_interval(a, b, n_boot=10, rng=0)


@pytest.mark.parametrize("kwargs, message", [({"n_boot": -1}, "n_boot"), ({"n_boot": 1.5}, "n_boot"),
                                             ({"n_boot": 10, "confidence": 95}, "confidence")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(MossaError, match=message):
        metric_interval(mean_scores("rougeL", np.arange(3), [0.1, 0.2, 0.3]), rng=0, **kwargs)


def _coverage(draw, truth, n, reps=300, paired=False):
    rng = np.random.default_rng([11, n])
    hits = 0
    for r in range(reps):
        sample = draw(rng, n)
        fn = paired_gain_interval if paired else metric_interval
        iv = fn(*sample, n_boot=200, rng=r) if paired else fn(sample, n_boot=200, rng=r)
        hits += iv.low <= truth <= iv.high
    return hits / reps


def _paired(rng, n):
    # base ~ Bernoulli(0.6); control keeps base's outcome w.p. 0.5, else a fresh Bernoulli(0.8): gain 0.5 * 0.2
    base = (rng.random(n) < 0.6).astype(float)
    control = np.where(rng.random(n) < 0.5, base, (rng.random(n) < 0.8).astype(float))
    return mean_scores("accuracy", np.arange(n), base), mean_scores("accuracy", np.arange(n), control)


def _ratio(rng, n):
    tokens = 1 + rng.poisson(5, n)
    return ratio_scores("nll_per_token", np.arange(n), tokens * rng.gamma(2.0, 1 + 1 / tokens), tokens)


@pytest.mark.parametrize("case, draw, truth, n, paired", [
    ("wilson", lambda rng, n: mean_scores("accuracy", np.arange(n), rng.random(n) < 0.8), 0.8, 48, False),
    ("bounded mean", lambda rng, n: mean_scores("rougeL", np.arange(n), rng.beta(2, 5, n)), 2 / 7, 48, False),
    ("ratio of sums", _ratio, 14 / 6, 96, False),
    ("paired gain", _paired, 0.1, 48, True)])
def test_coverage_by_simulation(case, draw, truth, n, paired):
    """A fast version of bench/metric_coverage.py: 300 replicates, standard error about 0.013."""
    assert 0.90 <= _coverage(draw, truth, n, paired=paired) <= 0.99


def test_bca_on_request():
    s = mean_scores("rougeL", np.arange(48), np.random.default_rng(2).beta(2, 5, 48))
    iv = metric_interval(s, n_boot=200, rng=0, method="BCa")
    assert iv.method == "bootstrap BCa" and iv.low < s.value < iv.high
