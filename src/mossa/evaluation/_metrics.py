"""Per-example and corpus task metrics from one evaluation record.

Stage: evaluation (pure functions over evaluation records; loads no model).

Every metric is held as a `MetricScores`: per-example sufficient statistics (one row per
evaluated example) and the function that turns their column sums into the metric. A mean is
the ratio of the sums of ``[value, 1]``, the NLL per token the ratio of the sums of
``[nll, tokens]``, BLEU and chrF sacrebleu's own statistics and scoring. Resampling examples
therefore means resampling rows of one matrix, the same for every metric (`_intervals.py`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mossa.errors import MossaError

CORPUS_CLUSTERS = ("Translation", "Struct-to-text")
OPTION_METRICS = ("accuracy", "accuracy_norm")
GENERATION_METRICS = ("exact_match", "rougeL")
CORPUS_METRICS = ("bleu", "chrf")
NLL_METRICS = ("nll_per_token", "nll_per_token_no_end")
LOWER_IS_BETTER = frozenset(NLL_METRICS)
RECORD_KEYS = ("rows", "target", "nll", "nll_tokens", "nll_no_end", "nll_no_end_tokens", "gold", "option_loglik",
               "option_chars", "generated")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class MetricScores:
    """One metric over the examples of one record.

    Attributes
    ----------
    name : str
        The metric name, e.g. ``"accuracy"``.
    kind : {"share", "mean", "corpus"}
        ``"share"``: the mean of 0/1 outcomes; ``"mean"``: the mean of bounded per-example scores;
        ``"corpus"``: any other function of summed statistics (BLEU, chrF, a ratio of sums).
    rows : ndarray of int, shape (n_examples,)
        The examples' indices in the task's test sample (used to pair two models).
    stats : ndarray, shape (n_examples, k)
        Per-example sufficient statistics; for a share or a mean, ``[value, 1]``.
    score : callable
        Summed statistics, shape (n_resamples, k), to the metric, shape (n_resamples,).
    """

    name: str
    kind: str
    rows: np.ndarray
    stats: np.ndarray
    score: Callable[[np.ndarray], np.ndarray]

    @property
    def n_examples(self) -> int:
        return len(self.rows)

    @property
    def value(self) -> float:
        """The metric on all examples (NaN without examples)."""
        if not self.n_examples:
            return float("nan")
        return float(self.score(self.stats.sum(axis=0)[None])[0])

    def take(self, positions: np.ndarray) -> MetricScores:
        """The same metric on a subset of the examples, given by position."""
        return MetricScores(self.name, self.kind, self.rows[positions], self.stats[positions], self.score)

    def on_rows(self, rows: np.ndarray) -> MetricScores:
        """The same metric on the examples with these row indices, in that order (to pair two models)."""
        where = {r: i for i, r in enumerate(self.rows.tolist())}
        return self.take(np.array([where[r] for r in np.asarray(rows).tolist()], dtype=int))


def ratio_of_sums(summed: np.ndarray) -> np.ndarray:
    """Column 0 over column 1 of summed statistics: a mean (with a column of ones) or a ratio estimator."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return summed[:, 0] / summed[:, 1]


def mean_scores(name: str, rows, values) -> MetricScores:
    """A mean of per-example scores; kind "share" when every score is 0 or 1 (Wilson applies)."""
    values = np.asarray(values, dtype=float)
    kind = "share" if np.all((values == 0) | (values == 1)) else "mean"
    stats = np.column_stack([values, np.ones_like(values)])
    return MetricScores(name, kind, np.asarray(rows, dtype=int), stats, ratio_of_sums)


def ratio_scores(name: str, rows, numerators, denominators) -> MetricScores:
    """A ratio estimator sum(numerators) / sum(denominators) over the examples."""
    stats = np.column_stack([np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)])
    return MetricScores(name, "corpus", np.asarray(rows, dtype=int), stats.reshape(-1, 2), ratio_of_sums)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation and the articles a/an/the removed, whitespace collapsed."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def option_scores(option_loglik, gold, option_chars=None) -> np.ndarray:
    """Per-row accuracy of picking the option with the highest log-likelihood (lm-eval ``acc``).

    With `option_chars`, each log-likelihood is first divided by its option's character count
    (lm-eval ``acc_norm``), which removes the advantage of short options. A row scores 1/k when
    the gold option is among k tied maxima: the expected accuracy of breaking the tie at random,
    rather than lm-eval's first-index rule, which favours whichever option is listed first.

    Parameters
    ----------
    option_loglik : list of list of float
        Per row, the summed log-probability of each option's content tokens.
    gold : list of int
        Per row, the index of the correct option.
    option_chars : list of list of int, optional
        Per row, the character count of each option text.
    """
    out = np.empty(len(gold))
    for i, (loglik, g) in enumerate(zip(option_loglik, gold)):
        loglik = np.asarray(loglik, dtype=float)
        if option_chars is not None:
            loglik = loglik / np.asarray(option_chars[i], dtype=float)
        best = loglik == loglik.max()
        out[i] = best[g] / best.sum()
    return out


def exact_match_scores(generated, targets) -> np.ndarray:
    """Per-row 1.0 when the answer equals the target after `normalize_answer`, else 0.0."""
    return np.array([float(normalize_answer(g) == normalize_answer(t)) for g, t in zip(generated, targets)])


_ROUGE = None


def rouge_l_scores(generated, targets) -> np.ndarray:
    """Per-row ROUGE-L F-measure (rouge_score, no stemming). Its tokenizer keeps only a-z and 0-9,
    so text in other scripts scores 0 (use chrF there)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"])
    return np.array([_ROUGE.score(t, g)["rougeL"].fmeasure for g, t in zip(generated, targets)])


def sacrebleu_scores(name: str, rows, generated, targets) -> MetricScores:
    """Corpus BLEU or chrF (0-100, sacrebleu defaults as in `corpus_bleu` / `corpus_chrf`) from
    per-sentence sufficient statistics, so a resample costs one sum and one sacrebleu scoring."""
    from sacrebleu.metrics import BLEU, CHRF

    metric = {"bleu": BLEU, "chrf": CHRF}[name]()
    width = len(metric._extract_corpus_statistics(["x"], [["x"]])[0])
    stats = np.array(metric._extract_corpus_statistics(list(generated), [list(targets)]), dtype=float)

    def score(summed: np.ndarray) -> np.ndarray:
        return np.array([metric._compute_score_from_stats(s.tolist()).score for s in summed])

    return MetricScores(name, "corpus", np.asarray(rows, dtype=int), stats.reshape(len(rows), width), score)


def primary_metric(cluster: str, has_options: bool) -> str:
    """The metric a task is judged by.

    Option tasks: accuracy, as lm-eval reports for multiple choice. Translation: chrF, which
    scores character n-grams, so it works on any script and on single sentences, where BLEU's
    4-gram precision is often zero. Other generation: ROUGE-L, which credits partly right
    answers that exact match scores 0.
    """
    if has_options:
        return "accuracy"
    return "chrf" if cluster == "Translation" else "rougeL"


def task_metrics(cluster: str, *, has_options: bool, has_generation: bool) -> tuple[str, ...]:
    """The metrics that apply to a task, in table order."""
    names = OPTION_METRICS if has_options else ()
    if has_generation:
        names += GENERATION_METRICS + (CORPUS_METRICS if cluster in CORPUS_CLUSTERS else ())
    return names + NLL_METRICS


def check_record(record: dict, where: str) -> dict:
    """The record with equal-length fields, unique rows and consistent options; MossaError otherwise."""
    if not isinstance(record, dict):
        raise MossaError(f"{where}: expected an evaluation record (a dict), got {type(record).__name__}; "
                         "pass the dict the extraction wrote, or None for a missing record")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise MossaError(f"{where}: evaluation record lacks {', '.join(missing)}; rewrite it with the extraction")
    lengths = {k: len(record[k]) for k in RECORD_KEYS}
    if len(set(lengths.values())) > 1:
        raise MossaError(f"{where}: expected fields of one length (one entry per row), got {lengths}; "
                         "rewrite the record")
    rows = record["rows"]
    if len(set(rows)) != len(rows):
        raise MossaError(f"{where}: expected unique row indices, got {len(rows) - len(set(rows))} repeated; "
                         "rewrite the record")
    for i, g in enumerate(record["gold"]):
        if g is None:
            if record["generated"][i] is not None and not isinstance(record["generated"][i], str):
                raise MossaError(f"{where}, row {rows[i]}: a generation row (gold None) needs a generated string "
                                 f"or None (not answered), got {record['generated'][i]!r}; rerun the generation")
            continue
        loglik, chars = record["option_loglik"][i], record["option_chars"][i]
        if loglik is None or chars is None or len(loglik) != len(chars) or not 0 <= g < len(loglik):
            raise MossaError(f"{where}, row {rows[i]}: expected option_loglik and option_chars of one length "
                             f"with gold inside, got gold {g}, {loglik!r}, {chars!r}; rewrite the record")
        if min(chars) <= 0:
            raise MossaError(f"{where}, row {rows[i]}: expected positive option character counts, got {chars}; "
                             "drop empty options from the task")
    return record


def record_metrics(record: dict, cluster: str, *, names=None, rows=None, where: str = "record") -> dict:
    """Every metric that applies to one record, as `MetricScores` by name.

    Option metrics use the option rows (gold not None), generation metrics the answered generation rows,
    the NLL ratio estimators all rows. `names` restricts which metrics are computed; `rows`
    restricts the record to those row indices (to pair two models on the same examples).
    """
    check_record(record, where)
    known = OPTION_METRICS + GENERATION_METRICS + CORPUS_METRICS + NLL_METRICS
    if names is not None and set(names) - set(known):
        raise MossaError(f"names: expected metrics among {', '.join(known)}, got "
                         f"{', '.join(sorted(set(names) - set(known)))}; pick from those")
    keep = range(len(record["rows"])) if rows is None else np.flatnonzero(np.isin(record["rows"], list(rows)))
    field = {k: [record[k][i] for i in keep] for k in RECORD_KEYS}
    opt = [i for i, g in enumerate(field["gold"]) if g is not None]
    gen = [i for i, g in enumerate(field["gold"]) if g is None and field["generated"][i] is not None]
    wanted = set(names) if names is not None else set(task_metrics(cluster, has_options=bool(opt),
                                                                    has_generation=bool(gen)))

    def pick(key: str, where_: list[int]) -> list:
        return [field[key][i] for i in where_]

    all_rows = np.asarray(field["rows"], dtype=int)
    opt_rows, gen_rows = all_rows[opt], all_rows[gen]
    out = {}
    if "accuracy" in wanted:
        out["accuracy"] = mean_scores("accuracy", opt_rows, option_scores(pick("option_loglik", opt),
                                                                          pick("gold", opt)))
    if "accuracy_norm" in wanted:
        out["accuracy_norm"] = mean_scores("accuracy_norm", opt_rows, option_scores(
            pick("option_loglik", opt), pick("gold", opt), pick("option_chars", opt)))
    generated, targets = pick("generated", gen), pick("target", gen)
    if "exact_match" in wanted:
        out["exact_match"] = mean_scores("exact_match", gen_rows, exact_match_scores(generated, targets))
    if "rougeL" in wanted:
        out["rougeL"] = mean_scores("rougeL", gen_rows, rouge_l_scores(generated, targets))
    for name in CORPUS_METRICS:
        if name in wanted:
            out[name] = sacrebleu_scores(name, gen_rows, generated, targets)
    if "nll_per_token" in wanted:
        out["nll_per_token"] = ratio_scores("nll_per_token", all_rows, field["nll"], field["nll_tokens"])
    if "nll_per_token_no_end" in wanted:
        out["nll_per_token_no_end"] = ratio_scores("nll_per_token_no_end", all_rows, field["nll_no_end"],
                                                   field["nll_no_end_tokens"])
    return out
