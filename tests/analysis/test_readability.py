"""Tests for mossa.analysis._readability: hand counts, tokenisation rules, textstat parity."""

from __future__ import annotations

import doctest

import pytest

import mossa.analysis._readability as rd
from mossa.analysis._readability import ReadabilityCounts, readability, readability_counts, syllable_count
from mossa.errors import MossaError


def fk(w, s, y):
    return 0.39 * w / s + 11.8 * y / w - 15.59


def cli(w, s, c):
    return 0.0588 * (100 * c / w) - 0.296 * (100 * s / w) - 15.8


# ----------------------------------------------------------------------------------------------
# Hand-computed values


def test_cat_on_the_mat_by_hand():
    # 6 words, 1 sentence, 6 one-syllable words, letters 3+3+3+2+3+3 = 17
    r = readability(["The cat sat on the mat."])
    assert r["flesch_kincaid_grade"] == pytest.approx(0.39 * 6 + 11.8 * 1 - 15.59)  # -1.45
    assert r["flesch_kincaid_grade"] == pytest.approx(-1.45)
    assert r["coleman_liau_index"] == pytest.approx(0.0588 * 1700 / 6 - 0.296 * 100 / 6 - 15.8)
    assert set(r) == {"flesch_kincaid_grade", "coleman_liau_index"}
    assert all(type(v) is float for v in r.values())


def test_polysyllables_by_hand():
    # read-a-bil-i-ty 5, is 1, com-pli-cat-ed 4 | syl-la-bles 3, mat-ter 2  -> 15 syllables
    # letters 11 + 2 + 11 + 9 + 6 = 39; 5 words; 2 sentences
    text = "Readability is complicated. Syllables matter!"
    c = readability_counts([text])
    assert (c.n_words, c.n_sentences, c.n_syllables, c.n_letters) == (5, 2, 15, 39)
    r = readability([text])
    assert r["flesch_kincaid_grade"] == pytest.approx(20.785)
    assert r["coleman_liau_index"] == pytest.approx(18.224)


@pytest.mark.parametrize("word,n", [
    ("cat", 1), ("the", 1), ("matter", 2), ("children", 2), ("quickly", 2), ("syllables", 3),
    ("every", 3),  # CMU's first pronunciation EH1 V ER0 IY0
    ("complicated", 4), ("notwithstanding", 4), ("readability", 5),
    ("Readability", 5), ("don't", 1), ("don’t", 1),
])
def test_syllables_from_cmudict(word, n):
    assert syllable_count(word) == n


def test_syllables_fallback_is_pyphen_for_unknown_words():
    pyphen = pytest.importorskip("pyphen")
    hyph = pyphen.Pyphen(lang="en_US")
    for word in ("zyzzyva", "hereinafter", "qwertyuiopasdf"):
        assert word not in rd._cmu()
        assert syllable_count(word) == len(hyph.positions(word)) + 1 >= 1
    assert syllable_count("x") == 1


# ----------------------------------------------------------------------------------------------
# Tokenisation rules (module docstring)


@pytest.mark.parametrize("text,words,sentences,letters", [
    ("no final punctuation here", 4, 1, 22),
    ("Well-known facts.", 3, 1, 14),                        # hyphen splits: well known facts
    ("In 1999 it cost 3.5 dollars.", 4, 1, 15),             # numbers are not words; 3.5 no split
    ("Don't stop. O'Neill’s here.", 4, 2, 19),                # apostrophes join, not counted
    ('He said "Go." Then he left.', 6, 2, 18),             # closing quote after the period
    ("Wait... what?! Really.", 3, 3, 14),                     # runs of terminal punctuation
    ("Dr. Smith arrived.", 3, 2, 14),                       # abbreviations over-split
    ("Title line\n\nbody text without stop", 6, 2, 28),    # blank line = paragraph break
    ("one line\nnext line.", 4, 1, 15),                     # a single newline does not split
    ("Café au lait.", 3, 1, 10),                             # letters of any script
    ("!!! ... 42", 0, 0, 0),
    ("", 0, 0, 0),
])
def test_tokenisation(text, words, sentences, letters):
    c = readability_counts([text])
    assert (c.n_words, c.n_sentences, c.n_letters) == (words, sentences, letters)


def test_pooled_not_averaged():
    short, long_ = "Go now.", ("Administrative considerations notwithstanding, the committee "
                                "deliberated extensively regarding the institutional implications.")
    c1, c2 = readability_counts([short]), readability_counts([long_])
    pooled = readability([short, long_])
    assert pooled["flesch_kincaid_grade"] == pytest.approx(fk(
        c1.n_words + c2.n_words, c1.n_sentences + c2.n_sentences, c1.n_syllables + c2.n_syllables))
    assert pooled["coleman_liau_index"] == pytest.approx(cli(
        c1.n_words + c2.n_words, c1.n_sentences + c2.n_sentences, c1.n_letters + c2.n_letters))
    mean = (readability([short])["flesch_kincaid_grade"] + readability([long_])["flesch_kincaid_grade"]) / 2
    assert pooled["flesch_kincaid_grade"] != pytest.approx(mean)


def test_each_text_ends_a_sentence():
    # without final punctuation the two texts are still two sentences (not glued together)
    assert readability_counts(["the first text", "the second text"]).n_sentences == 2
    assert readability_counts(["the first text the second text"]).n_sentences == 1
    # texts that end properly give the same counts as their concatenation
    a, b = "The dog ran fast.", "It was very happy!"
    assert readability_counts([a, b]) == ReadabilityCounts(
        n_texts=2, **{k: v for k, v in vars(readability_counts([a + " " + b])).items() if k != "n_texts"})


def test_order_and_empty_texts_do_not_matter():
    texts = ["The dog ran fast.", "Legislative deliberations continued.", "A cat sat."]
    base = readability(texts)
    assert readability(texts[::-1]) == pytest.approx(base)
    assert readability(texts + ["", "   ", "123"]) == pytest.approx(base)
    assert readability(iter(texts)) == pytest.approx(base)  # any iterable of str


# ----------------------------------------------------------------------------------------------
# Sanity: harder text scores higher


CHILDREN = ["The cat sat on the mat. The dog ran to the big red ball. We had fun in the sun."]
LEGAL = [
    "Notwithstanding any provision of this Agreement to the contrary, the Licensee shall "
    "indemnify, defend and hold harmless the Licensor and its affiliates from and against any "
    "and all liabilities, damages, obligations and expenses arising out of or relating to the "
    "Licensee's performance hereunder, including reasonable attorneys' fees, except to the "
    "extent attributable to the Licensor's gross negligence or wilful misconduct."
]


def test_children_score_below_legal():
    kids, legal = readability(CHILDREN), readability(LEGAL)
    for key in ("flesch_kincaid_grade", "coleman_liau_index"):
        assert kids[key] < 2.0 < 15.0 < legal[key]


# ----------------------------------------------------------------------------------------------
# Agreement with textstat's formulas (with an offline CMU dictionary patched in)


PLAIN = [
    "The quick brown fox jumps over the lazy dog. A second sentence follows here!",
    "Researchers examined how instruction tuning changes internal representations of language models.",
    CHILDREN[0],
    "Please summarize the following article about the economy. The markets fell sharply today "
    "while investors worried about rising interest rates and slowing growth in many countries.",
]


@pytest.fixture
def offline_textstat(monkeypatch):
    """textstat 0.7.x with its NLTK cmudict getter replaced by the ``cmudict`` package."""
    textstat = pytest.importorskip("textstat")
    count_module = pytest.importorskip("textstat.backend.counts._count_syllables")
    cmu = rd._cmu()
    monkeypatch.setattr(count_module, "get_cmudict", lambda lang: cmu)  # never downloads
    return textstat


@pytest.mark.parametrize("text", PLAIN)
def test_agrees_with_textstat(offline_textstat, text):
    # On plain prose (every sentence > 2 words, no digits, hyphens or abbreviations) both
    # tokenise alike; FK must agree exactly, and CLI differs only by textstat's 0.058 vs 0.0588.
    ts = offline_textstat
    c = readability_counts([text])
    assert ts.lexicon_count(text) == c.n_words
    assert ts.sentence_count(text) == c.n_sentences
    assert ts.syllable_count(text) == c.n_syllables
    assert ts.letter_count(text) == c.n_letters
    r = readability([text])
    assert r["flesch_kincaid_grade"] == pytest.approx(ts.flesch_kincaid_grade(text), abs=1e-9)
    letters_per_100 = 100 * c.n_letters / c.n_words
    assert r["coleman_liau_index"] - ts.coleman_liau_index(text) == pytest.approx(
        0.0008 * letters_per_100, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("texts,match", [
    ([], r"texts: expected at least one text, got an empty list.*Fix"),
    ("The cat sat.", r"expected a list of strings, got a single str.*Fix: wrap it"),
    (None, r"expected a list of strings, got NoneType.*Fix"),
    (["ok", 3, None], r"got 2 that are not \(indices starting \[1, 2\], first of type int\).*Fix"),
    (["", "  ", "42 ... 3.14 !!"], r"expected some words.*got none in 3 text\(s\).*Fix"),
])
def test_errors(texts, match):
    with pytest.raises(MossaError, match=match):
        readability(texts)


def test_doctests():
    result = doctest.testmod(rd, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0
