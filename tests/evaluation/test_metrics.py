import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from mossa.errors import MossaError
from mossa.evaluation import (
    exact_match_scores,
    normalize_answer,
    option_scores,
    primary_metric,
    record_metrics,
    rouge_l_scores,
    task_metrics,
)

HYPS = ["the cat sat on the mat", "a dog runs in the park", "hello world", "das ist gut", ""]
REFS = ["the cat is on the mat", "the dog runs fast in a park", "hello there world", "das ist sehr gut", "nothing"]


def record(gold, loglik=None, chars=None, generated=None, targets=None, nll=None, tokens=None):
    n = len(gold)
    loglik = loglik or [None] * n
    return {"rows": list(range(n)), "target": targets or ["t"] * n, "nll": nll or [1.0] * n,
            "nll_tokens": tokens or [2] * n, "nll_no_end": [0.5] * n, "nll_no_end_tokens": [1] * n, "gold": gold,
            "option_loglik": loglik, "option_tokens": [None if x is None else [1] * len(x) for x in loglik],
            "option_chars": chars or [None] * n, "generated": generated or [None] * n, "lens": {}}


def test_accuracy_and_norm_on_a_hand_made_record():
    loglik = [[-1.0, -2.0, -3.0], [-4.0, -6.0, -1.0], [-2.0, -3.0, -9.0]]
    chars = [[1, 1, 1], [2, 20, 1], [1, 10, 1]]
    rec = record([0, 1, 1], loglik, chars)
    m = record_metrics(rec, "NLI")
    assert list(m) == ["accuracy", "accuracy_norm", "nll_per_token", "nll_per_token_no_end"]
    # argmax: row 0 -> 0 (right), row 1 -> 2 (wrong), row 2 -> 0 (wrong)
    assert m["accuracy"].value == pytest.approx(1 / 3) and m["accuracy"].kind == "share"
    # per char: row 1 -> [-2, -0.3, -1] picks 1 (right); row 2 -> [-2, -0.3, -9] picks 1 (right)
    assert m["accuracy_norm"].value == pytest.approx(1.0)
    assert m["accuracy"].n_examples == 3


def test_ties_score_one_over_k():
    loglik = [[-1.0, -1.0, -3.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -0.5], [-2.0, -1.0, -1.0]]
    scores = option_scores(loglik, [0, 2, 0, 0])
    np.testing.assert_allclose(scores, [0.5, 1 / 3, 0.0, 0.0])
    m = record_metrics(record([0, 2, 0, 0], loglik, [[1, 1, 1]] * 4), "NLI")
    assert m["accuracy"].kind == "mean" and m["accuracy"].value == pytest.approx((0.5 + 1 / 3) / 4)


@pytest.mark.parametrize("answer, target, hit", [
    ("The Cat!", "cat", 1.0), ("an apple.", "Apple", 1.0), ("  New   York ", "new york", 1.0),
    ("theatre", "atre", 0.0), ("a b", "ab", 0.0), ("U.S.A", "usa", 1.0), ("the", "", 1.0)])
def test_exact_match_normalisation(answer, target, hit):
    assert exact_match_scores([answer], [target])[0] == hit


def test_normalize_answer():
    assert normalize_answer("The quick, brown FOX; an idea. A") == "quick brown fox idea"


def test_rouge_l_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)]
    np.testing.assert_allclose(rouge_l_scores(HYPS, REFS), expected)


@pytest.mark.parametrize("cluster", ["Translation", "Struct-to-text"])
def test_bleu_chrf_equal_sacrebleu(cluster):
    n = len(HYPS)
    m = record_metrics(record([None] * n, generated=HYPS, targets=REFS), cluster)
    assert list(m) == ["exact_match", "rougeL", "bleu", "chrf", "nll_per_token", "nll_per_token_no_end"]
    assert m["bleu"].value == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-12)
    assert m["chrf"].value == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-12)
    part = np.array([0, 2, 3])
    sub_h, sub_r = [HYPS[i] for i in part], [REFS[i] for i in part]
    assert m["bleu"].take(part).value == pytest.approx(sacrebleu.corpus_bleu(sub_h, [sub_r]).score, abs=1e-12)
    assert m["chrf"].take(part).value == pytest.approx(sacrebleu.corpus_chrf(sub_h, [sub_r]).score, abs=1e-12)
    assert m["rougeL"].value == pytest.approx(np.mean(rouge_l_scores(HYPS, REFS)))


def test_no_corpus_metrics_outside_their_clusters():
    n = len(HYPS)
    assert "bleu" not in record_metrics(record([None] * n, generated=HYPS, targets=REFS), "QA")


def test_mixed_record_and_nll_ratio_estimators():
    rec = record([1, None, 0], [[-2.0, -1.0], None, [-1.0, -1.0]], [[1, 1], None, [1, 1]],
                 [None, "The answer", None], ["b", "answer", "a"], nll=[2.0, 3.0, 7.0], tokens=[1, 2, 3])
    m = record_metrics(rec, "QA")
    assert m["accuracy"].n_examples == 2 and m["accuracy"].value == pytest.approx(0.75)
    assert m["exact_match"].n_examples == 1 and m["exact_match"].value == 1.0
    assert list(m["exact_match"].rows) == [1]
    assert m["nll_per_token"].value == pytest.approx(12 / 6) and m["nll_per_token"].n_examples == 3
    assert m["nll_per_token_no_end"].value == pytest.approx(1.5 / 3)
    restricted = record_metrics(rec, "QA", rows=[0, 1])
    assert restricted["nll_per_token"].value == pytest.approx(5 / 3)


def test_empty_record_gives_nan():
    m = record_metrics(record([]), "Translation", names=task_metrics("Translation", has_options=True,
                                                                    has_generation=True))
    assert all(s.n_examples == 0 and np.isnan(s.value) for s in m.values())


def test_unanswered_generation_rows_count_for_the_loss_alone():
    """Rows past `generate_examples` (generated None) are left out of the answer metrics, not scored 0."""
    rec = record([None, None, None], generated=["a b", "x", None], targets=["a b", "a b", "a b"],
                 nll=[1.0, 2.0, 3.0])
    m = record_metrics(rec, "QA")
    assert m["exact_match"].n_examples == 2 and m["exact_match"].value == pytest.approx(0.5)
    assert m["nll_per_token"].n_examples == 3 and m["nll_per_token"].value == pytest.approx(6 / 6)


def test_primary_metric():
    assert primary_metric("Translation", True) == "accuracy"
    assert primary_metric("Translation", False) == "chrf"
    assert primary_metric("Struct-to-text", False) == "rougeL"


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(nll=[1.0]), "one length"),
    (lambda r: r.update(gold=[5, 0]), "gold inside"),
    (lambda r: r.update(gold=[None, 0], generated=[5, None]), "generated string"),
    (lambda r: r.update(rows=[0, 0]), "unique row"),
    (lambda r: r.update(option_chars=[[0, 1], [1, 1]]), "positive option character"),
    (lambda r: r.pop("nll_tokens"), "lacks nll_tokens")])
def test_bad_records_raise(change, message):
    rec = record([0, 1], [[-1.0, -2.0], [-1.0, -2.0]], [[1, 1], [1, 1]])
    change(rec)
    with pytest.raises(MossaError, match=message):
        record_metrics(rec, "NLI")


def test_unknown_metric_name():
    with pytest.raises(MossaError, match="expected metrics among"):
        record_metrics(record([0], [[-1.0]], [[1]]), "NLI", names=["acc"])
