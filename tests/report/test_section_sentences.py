"""The summary's sentences on the causal check and the outlier controls, from planted verdicts."""

import numpy as np

from mossa.report._summary import causal_sentence, robustness_sentence

RANGES = {"shared": [1, 6], "transition": [7, 12], "refinement": [13, 18]}


def _verdict(only, outside, n=4):
    part = {"only": dict(zip(RANGES, only)), "outside": dict(zip(RANGES, outside)), "n_tasks": dict.fromkeys(RANGES, n),
            "carrier": list(RANGES)[int(np.argmax(only))]}
    return {"primary": part, "nll_per_token": {**part, "carrier": None}, "ranges": RANGES,
            "source": "the sections found"}


def test_a_range_carries_the_gain_only_when_it_alone_keeps_most_and_without_it_little_is_left():
    said = causal_sentence(_verdict([0.05, 0.2, 0.8], [0.9, 0.7, 0.1]))
    assert said.startswith("E's gain over B is carried by its adapter in layers 13-18 (refinement)")
    assert "0.80 in layers 13-18 (refinement)" in said and "0.10 without the refinement" in said
    assert "4 tasks where E's gain is above 0" in said
    spread = causal_sentence(_verdict([0.6, 0.55, 0.3], [0.8, 0.9, 0.85]))
    assert spread.startswith("No one layer range of E's adapter carries E's gain over B")
    redundant = causal_sentence(_verdict([0.1, 0.2, 0.8], [0.9, 0.7, 0.6]))  # removing it leaves most of the gain
    assert redundant.startswith("No one layer range")


def test_no_gain_to_share_out_and_no_check():
    verdict = _verdict([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    verdict["primary"]["carrier"] = None
    assert "cannot say which layers carry E's gain" in causal_sentence(verdict)
    assert causal_sentence(None) is None and robustness_sentence(None) is None


def test_robustness_sentence_names_what_survives_and_the_largest_change_of_the_same_estimator():
    original = [None, -0.3, -0.1, 0.2]
    rob = {"outliers": {"median_count": 6, "frequent_dims": [163, 400], "median_variance_share": 0.3,
                        "median_top_direction_share": 0.46},
           "original": {"median_gain": original},
           "variants": {"debiased_cka_standardized": {"verdict": "survives", "median_gain": [None, -0.05, -0.1, 0.2]},
                        "linear_cka_standardized": {"verdict": "does not survive",
                                                    "median_gain": [None, 0.5, 0.0, 0.2]},
                        "debiased_cka_random_dims": {"verdict": "survives", "median_gain": original}}}
    said = robustness_sentence(rob)
    assert "a median of 6 per layer, most often 163, 400, carrying a median 30% of the variance" in said
    assert "survive debiased CKA on standardised features, debiased CKA with as many random dimensions removed" in said
    assert "but not biased linear CKA on standardised features" in said
    assert "at layer 1, from -0.30 to -0.05 under debiased CKA on standardised features" in said  # not the biased one
