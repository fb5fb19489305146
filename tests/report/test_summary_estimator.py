"""The summary's E - B verdict reads debiased CKA: a difference of spectrum alone (same population CKA with
every control) gives no verdict, a planted gain does, and biased linear CKA, which the first case fools,
is named as such when it is the only CKA measured."""

import numpy as np
import pandas as pd

from mossa.report import summary_sentences
from mossa.report._summary import BIASED_NOTE, summarize
from mossa.similarity import linear_cka

N, K, D_B, D_E, LAYERS = 48, 8, 400, 4, 3


def _states(rng, gain):
    """C_t, B and E on one task's 48 prompts. B and E carry the same 8 task directions S; their other
    features are noise of equal Frobenius norm, so their population CKA with C_t is the same. B's noise
    is spread over 400 directions and E's over 4 (E's spectrum has a few dominant directions). `gain`
    scales E's task directions: 0 = a difference of spectrum alone."""
    S = rng.standard_normal((N, K))
    C = S @ rng.standard_normal((K, 64)) + 0.5 * rng.standard_normal((N, 64))
    B = np.hstack([S, rng.standard_normal((N, D_B))])
    E = np.hstack([S * (1 + gain), (D_B / D_E) ** 0.25 * rng.standard_normal((N, D_E)), np.zeros((N, D_B - D_E))])
    return C, B, E


def _study(gain, measures=("linear_cka", "debiased_cka"), n_tasks=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tasks):
        for layer in range(1, LAYERS + 1):
            C, B, E = _states(rng, gain)
            for model, X in (("base", B), ("experimental", E)):
                for measure in measures:
                    rows.append({"task": f"t{t}", "cluster": f"c{t % 4}", "model": model, "layer": layer,
                                 "measure": measure, "value": linear_cka(X, C, debiased=measure == "debiased_cka"),
                                 "undefined_reason": ""})
    sim = pd.DataFrame(rows)
    study = {"model": {"name": "toy", "n_layers": LAYERS}}
    controls = pd.DataFrame({"task": [f"t{t}" for t in range(n_tasks)]})
    summary = summarize(study, sim, controls, {"transition_found": False, "reason": "none tested"})
    return summary, " ".join(summary_sentences(summary))


def test_a_spectrum_difference_alone_gives_no_e_minus_b_verdict():
    summary, text = _study(gain=0.0)
    assert summary.measure == "debiased_cka" and "median debiased CKA" in text
    assert "E - B over layers" in text and "E - B is within noise of 0 (one E seed: its seed variation is not measured)" in text
    assert "beyond noise" not in text


def test_biased_linear_cka_alone_is_fooled_by_the_spectrum_and_says_so():
    summary, text = _study(gain=0.0, measures=("linear_cka",))
    assert summary.measure == "linear_cka" and BIASED_NOTE in text
    assert "beyond noise" in text  # the inflation differs between the spectra: why the summary reads debiased


def test_a_planted_gain_is_beyond_noise():
    summary, text = _study(gain=1.0)
    assert summary.reference["difference"]["median"] > 0.2
    assert "E - B is above 0 beyond noise (by its interval over tasks)" in text


def test_seed_agreement_is_read_on_its_own_tasks_and_never_against_a_difference():
    """The second seed's agreement is compared with E and B on the same tasks (like with like), and the E - B
    verdict rests on its interval alone: a difference is not read against a level."""
    rows = []
    for t in range(6):
        for model, value in (("base", 0.2 + 0.1 * t), ("experimental", 0.3 + 0.1 * t), ("ceiling", 0.5)):
            if model != "ceiling" or t < 2:  # two tasks have a second seed, the lowest-valued ones
                rows.append({"task": f"t{t}", "cluster": "c", "model": model, "layer": 3, "measure": "debiased_cka",
                             "value": value, "undefined_reason": ""})
    summary = summarize({"model": {"name": "toy", "n_layers": 3}}, pd.DataFrame(rows),
                        pd.DataFrame({"task": [f"t{t}" for t in range(6)]}), {"transition_found": False})
    text = " ".join(summary_sentences(summary))
    assert "on the same tasks E reaches 0.35 and B 0.25" in text  # t0, t1 only (all six: 0.55 and 0.45)
    assert "the two seeds agree at 0.50" in text and "not an upper bound" in text
    assert "E - B is above 0 beyond noise (by its interval over tasks)" in text and "seeds of one control differ" not in text
