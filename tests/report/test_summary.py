"""The report's summary sentences: never a cluster listed as both best and worst, signs as measured."""

from mossa.report import StudySummary, summary_sentences


def _summary(base_upper, gains):
    return StudySummary(model="m", n_layers=6, n_tasks=len(base_upper), clusters=sorted(base_upper),
                        sections={"transition_found": False, "reason": "too few tasks"}, heldout_sections={},
                        upper_layers=[5, 6], base_upper_by_cluster=base_upper, gain_by_cluster=gains,
                        median_base_upper=0.5, median_experimental_upper=0.6)


def test_best_and_worst_clusters_do_not_overlap_and_losses_keep_their_sign():
    text = " ".join(summary_sentences(_summary({"A": 0.9, "B": 0.3}, {"A": (0.2, 3), "B": (-0.04, 5)})))
    assert "best in A (0.90), and least in B (0.30)" in text
    assert "A (+0.20 at layer 3), B (-0.04 at layer 5)" in text and "+-" not in text


def test_one_cluster_is_named_once():
    text = " ".join(summary_sentences(_summary({"A": 0.9}, {"A": (0.1, 2)})))
    assert "at 0.90 in its one cluster, A" in text and "least in" not in text


def test_a_demo_study_states_the_clusters_it_lacks_with_the_screens_numbers():
    from mossa.config import DEMO_TASKS, DEMO_UNCOVERED
    from mossa.report.html import _coverage_sentences

    clusters = ["Paraphrase detection", "Struct-to-text", "Translation", "Misc", "NLI", "Summarization"]
    study = {"config": {"preset": "demo"},
             "tasks": {t: {"cluster": clusters[i % 6]} for i, t in enumerate(DEMO_TASKS)}}
    [sentence] = _coverage_sentences(study)
    assert sentence.startswith("The demo covers 6 of the 12 Flan 2021 clusters. In the other 6,")
    assert all(cluster in sentence for cluster in DEMO_UNCOVERED) and "sst2 16x2" in sentence
    assert _coverage_sentences({**study, "tasks": dict(list(study["tasks"].items())[:3])}) == []  # other tasks
    assert _coverage_sentences({**study, "config": {"preset": "quick"}}) == []
