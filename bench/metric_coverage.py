"""Coverage of the task-metric intervals (`mossa.evaluation`): how often a nominal 95% interval holds
the true value of a known population.

For every case and size n, `--replicates` samples of n examples are drawn from one fixed
population and each gets its interval exactly as the performance table computes it
(`metric_interval`, `paired_gain_interval`, `--n-boot` resamples); bootstraps run as percentile
(the default) and as BCa on the same resamples. Coverage is the share of intervals containing the true
value, with its binomial standard error. Populations:

- Bernoulli p = 0.5, 0.8, 0.95 (accuracy without ties, exact match): truth p;
- ties: scores 0, 1/2, 1 with probabilities 0.3, 0.2, 0.5 (accuracy with tied options): truth 0.6;
- Beta(2, 5) scores: truth 2/7; ROUGE-like: 0 w.p. 0.3, 1 w.p. 0.2, else Beta(2, 2): truth 0.45;
- ratio of sums (NLL per token): T = 1 + Poisson(5) tokens, per-token loss m ~ Gamma(2, 1 + 1/T),
  NLL = T m: truth E[T m] / E[T] = 14/6;
- corpus BLEU and chrF: a fixed pool of `POOL` synthetic (hypothesis, reference) pairs, sampled
  with replacement; truth the sacrebleu score of the whole pool (the limit of the corpus score);
- paired gain of 0/1 outcomes, base p 0.60, control 0.75, correlation 0.4: truth 0.15; and no gain
  (0.70 and 0.70), where the share of intervals with ci_low > 0 is the false "learned" rate;
- paired chrF gain: a pool of (reference, base, control) triples, the control closer to the reference.

    python bench/metric_coverage.py                    # n 48 and 96, 2000 replicates
    python bench/metric_coverage.py --replicates 500 --sizes 48
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import table, write_result

from mossa.evaluation import metric_interval, paired_gain_interval
from mossa.evaluation._metrics import mean_scores, ratio_scores, sacrebleu_scores

POOL = 20000
VOCAB = [f"w{i}" for i in range(300)]
ZIPF = 1.0 / np.arange(1, len(VOCAB) + 1)
ZIPF /= ZIPF.sum()


def _sentences(rng: np.random.Generator, n: int) -> list[list[str]]:
    return [list(rng.choice(VOCAB, size=rng.integers(5, 21), p=ZIPF)) for _ in range(n)]


def _noisy(rng: np.random.Generator, ref: list[str], keep: float) -> str:
    """A hypothesis: each reference word kept w.p. `keep`, else replaced (2/3) or dropped (1/3)."""
    out = []
    for w in ref:
        u = rng.random()
        if u < keep:
            out.append(w)
        elif u < keep + (1 - keep) * 2 / 3:
            out.append(str(rng.choice(VOCAB, p=ZIPF)))
    return " ".join(out)


class Pools:
    """Fixed corpora to sample from, with sacrebleu statistics computed once."""

    def __init__(self, seed: int):
        rng = np.random.default_rng([seed, 7])
        refs = _sentences(rng, POOL)
        keep = rng.uniform(0.3, 0.95, POOL)  # per-sentence quality varies
        rows = np.arange(POOL)
        ref_text = [" ".join(r) for r in refs]
        hyp = [_noisy(rng, r, k) for r, k in zip(refs, keep)]
        better = [_noisy(rng, r, min(k + 0.1, 1.0)) for r, k in zip(refs, keep)]
        self.bleu = sacrebleu_scores("bleu", rows, hyp, ref_text)
        self.chrf = sacrebleu_scores("chrf", rows, hyp, ref_text)
        self.chrf_better = sacrebleu_scores("chrf", rows, better, ref_text)


def _means(name: str, draw):
    return lambda rng, n: mean_scores(name, np.arange(n), draw(rng, n))


def _ratio(rng: np.random.Generator, n: int):
    tokens = 1 + rng.poisson(5, n)
    nll = tokens * rng.gamma(2.0, 1 + 1 / tokens)
    return ratio_scores("nll_per_token", np.arange(n), nll, tokens)


def _pool(scores):
    return lambda rng, n: scores.take(rng.integers(0, scores.n_examples, n))


def _paired_binary(p_base: float, p_control: float, rho: float):
    both = p_base * p_control + rho * np.sqrt(p_base * (1 - p_base) * p_control * (1 - p_control))
    cells = np.array([1 - p_base - p_control + both, p_control - both, p_base - both, both])  # (b, c) = 00 01 10 11

    def draw(rng: np.random.Generator, n: int):
        cell = rng.choice(4, size=n, p=cells)
        base, control = (cell >= 2).astype(float), (cell % 2).astype(float)
        return mean_scores("accuracy", np.arange(n), base), mean_scores("accuracy", np.arange(n), control)
    return draw


def _paired_pool(base, control):
    def draw(rng: np.random.Generator, n: int):
        pick = rng.integers(0, base.n_examples, n)
        return base.take(pick), control.take(pick)
    return draw


def cases(pools: Pools) -> list[tuple[str, object, float, bool]]:
    """(label, draw(rng, n), truth, paired)."""
    out = [(f"Bernoulli p={p}", _means("accuracy", lambda rng, n, p=p: (rng.random(n) < p).astype(float)), p, False)
           for p in (0.5, 0.8, 0.95)]
    out += [
        ("ties {0, 1/2, 1}", _means("accuracy", lambda rng, n: rng.choice([0.0, 0.5, 1.0], n, p=[0.3, 0.2, 0.5])),
         0.6, False),
        ("Beta(2, 5) score", _means("rougeL", lambda rng, n: rng.beta(2, 5, n)), 2 / 7, False),
        ("ROUGE-like (zeros, ones, Beta)", _means("rougeL", lambda rng, n: np.select(
            [rng.random(n) < 0.3, rng.random(n) < 0.2 / 0.7], [0.0, 1.0], rng.beta(2, 2, n))), 0.45, False),
        ("ratio of sums (NLL per token)", _ratio, 14 / 6, False),
        ("corpus BLEU", _pool(pools.bleu), pools.bleu.value, False),
        ("corpus chrF", _pool(pools.chrf), pools.chrf.value, False),
        ("paired gain 0.60 -> 0.75, rho 0.4", _paired_binary(0.60, 0.75, 0.4), 0.15, True),
        ("paired gain 0.70 -> 0.70 (no gain)", _paired_binary(0.70, 0.70, 0.4), 0.0, True),
        ("paired chrF gain", _paired_pool(pools.chrf, pools.chrf_better), pools.chrf_better.value - pools.chrf.value,
         True),
    ]
    return out


def replicate(draw, truth: float, paired: bool, n: int, reps: int, n_boot: int, seed: int, label: str) -> dict:
    rng = np.random.default_rng([seed, n, sum(map(ord, label))])
    hits = {"percentile": [], "BCa": []}
    above = {"percentile": [], "BCa": []}
    methods = {"percentile": set(), "BCa": set()}
    for r in range(reps):
        sample = draw(rng, n)
        for method in hits:
            stream = np.random.default_rng([seed, n, r])  # the same resamples for both methods
            if paired:
                iv = paired_gain_interval(*sample, n_boot=n_boot, rng=stream, method=method)
            else:
                iv = metric_interval(sample, n_boot=n_boot, rng=stream, method=method)
            methods[method].add(iv.method)
            hits[method].append(iv.low <= truth <= iv.high)
            above[method].append(iv.low > 0)
    out = {"methods": {m: sorted(v) for m, v in methods.items()}}
    for method in hits:
        cov = float(np.mean(hits[method]))
        out[method] = {"coverage": cov, "se": float(np.sqrt(cov * (1 - cov) / reps)),
                       "ci_low_above_0": float(np.mean(above[method]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--sizes", default="48,96")
    ap.add_argument("--n-boot", type=int, default=200, help="resamples per interval (the table's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    pools = Pools(args.seed)
    print(f"pools of {POOL} sentences: {time.perf_counter() - t0:.1f} s", flush=True)
    rows, results = [], []
    for label, draw, truth, paired in cases(pools):
        for n in sizes:
            t0 = time.perf_counter()
            res = replicate(draw, truth, paired, n, args.replicates, args.n_boot, args.seed, label)
            seconds = time.perf_counter() - t0
            results.append({"case": label, "n": n, "truth": truth, **res, "seconds": round(seconds, 1)})
            bca, pct = res["BCa"], res["percentile"]
            rows.append([label, n, f"{truth:.4f}", ", ".join(res["methods"]["percentile"]), f"{pct['coverage']:.3f}",
                         f"{pct['se']:.3f}", f"{bca['coverage']:.3f}", f"{pct['ci_low_above_0']:.3f}"])
            print(f"{label} n={n}: {seconds:.1f} s", flush=True)
    print(table(rows, ["case", "n", "truth", "interval (default)", "coverage", "se", "coverage BCa", "ci_low>0"]))
    path = write_result("metric_coverage", {"replicates": args.replicates, "n_boot": args.n_boot, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
