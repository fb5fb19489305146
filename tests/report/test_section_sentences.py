"""The summary's sentences on the causal check and the outlier controls, from planted verdicts."""

import numpy as np
import pandas as pd

from mossa.causal import CAUSAL_COLUMNS, section_verdict
from mossa.report._summary import causal_sentence, robustness_sentence

RANGES = {"shared": [1, 6], "transition": [7, 12], "refinement": [13, 18]}


def _verdict(only, outside, p_above, p_below_outside, gain_p=1e-6):
    """A one-task causal.csv of E on accuracy (shares with +-0.1 intervals and the given p-values), judged."""
    rows = []
    for (name, share), (_, kept), pa, pbo in zip(zip(RANGES, only), zip(RANGES, outside), p_above, p_below_outside):
        for mask, s, above in ((f"only {name}", share, pa), (f"outside {name}", kept, 1 - pbo)):
            row = dict.fromkeys(CAUSAL_COLUMNS, np.nan)
            row.update(task="t", cluster="NLI", model="experimental", mask=mask, section=name, metric="accuracy",
                       share=s, share_low=s - 0.1, share_high=s + 0.1, share_reason="", gain_p=gain_p,
                       above_half_p=above, below_half_p=1 - above)
            if gain_p > 0.025:  # E's gain not established: no share, as causal_table writes it
                row.update(share=np.nan, share_low=np.nan, share_high=np.nan, above_half_p=np.nan,
                           below_half_p=np.nan,
                           share_reason="experimental's gain over B is not above 0 by its paired 95% interval")
            rows.append(row)
    verdict = section_verdict(pd.DataFrame(rows, columns=CAUSAL_COLUMNS))
    return {**verdict, "ranges": RANGES, "source": "the sections found"}


def test_a_range_carries_the_gain_only_when_its_corrected_tests_say_so():
    said = causal_sentence(_verdict([0.05, 0.2, 0.8], [0.9, 0.7, 0.1], [1.0, 1.0, 1e-5], [1.0, 1.0, 1e-5]))
    assert "finds E's gain over B carried by its adapter in layers 13-18 (refinement)" in said
    assert "the refinement alone keeps 0.80 [0.70, 0.90], without the refinement 0.10 [0.00, 0.20] is left" in said
    weak = causal_sentence(_verdict([0.05, 0.2, 0.8], [0.9, 0.7, 0.1], [1.0, 1.0, 0.03], [1.0, 1.0, 0.03]))
    assert "finds no layer range that carries" in weak and "undetermined, the intervals too wide" in weak


def test_no_gain_to_share_out_and_no_check():
    said = causal_sentence(_verdict([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [1.0] * 3, [1.0] * 3, gain_p=0.3))
    assert "could test nothing" in said and "gain over B is not above 0" in said
    spread = causal_sentence(_verdict([0.1, 0.2, 0.3], [0.9, 0.8, 0.7], [1.0] * 3, [1.0] * 3))
    assert "no single range carries it on t" in spread
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
