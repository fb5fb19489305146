"""The tasks a study's config names for E' (held out), C_t' (second seed) and the causal check."""

import pytest

from mossa.config import DEMO_TASKS, resolve_config
from mossa.errors import MossaError
from mossa.tasks import check_task_choices, load_tasks, resolve_ceiling, resolve_holdout
from tests.conftest import FLAN_MINI


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_holdout_takes_one_task_from_each_of_seven_clusters():
    tasks = load_tasks(FLAN_MINI)
    cluster = {t.name: t.cluster for t in tasks}
    held = resolve_holdout(resolve_config({"seed": 0}), tasks)
    assert len(held) == 7 and len({cluster[t] for t in held}) == 7
    assert held == resolve_holdout(resolve_config({"seed": 0}), tasks)
    assert held != resolve_holdout(resolve_config({"seed": 1}), tasks)
    assert resolve_holdout(resolve_config({"holdout": "none"}), tasks) == ()


def test_auto_holdout_never_takes_every_task(tiny_tasks):
    tasks = load_tasks(tiny_tasks)
    assert len(resolve_holdout(resolve_config({"preset": "demo"}), tasks)) == 1


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_holdout_takes_at_most_half_the_tasks():
    tasks = load_tasks(FLAN_MINI, DEMO_TASKS)
    cluster = {t.name: t.cluster for t in tasks}
    held = resolve_holdout(resolve_config({}), tasks)
    assert len(held) == len(DEMO_TASKS) // 2 == len({cluster[t] for t in held}) == 6  # one of each cluster
    assert {"glue_mrpc", "cb", "ag_news_subset"} <= set(held)  # the clusters of one task are unseen by E'


TWELVE_CLUSTERS = ["snli", "openbookqa", "arc_easy", "copa", "winogrande", "sst2", "glue_mrpc", "e2e_nlg",
                   "tatoeba_translate_deen", "ag_news_subset", "cosmos_qa", "trec"]  # one task per cluster


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_ceiling_takes_four_tasks_of_different_clusters():
    tasks = load_tasks(FLAN_MINI, TWELVE_CLUSTERS)
    cluster = {t.name: t.cluster for t in tasks}
    picked = resolve_ceiling(resolve_config({"ceiling_tasks": "auto"}), tasks)
    assert picked == ("snli", "winogrande", "e2e_nlg", "trec") and len({cluster[t] for t in picked}) == 4
    assert resolve_ceiling(resolve_config({"ceiling_tasks": ["trec", "sst2"]}), tasks) == ("sst2", "trec")
    assert resolve_ceiling(resolve_config({"preset": "quick"}), tasks) == ()
    assert resolve_ceiling(resolve_config({"ceiling_tasks": "all"}), tasks) == tuple(t.name for t in tasks)
    assert resolve_ceiling(resolve_config({"ceiling_tasks": ["all"]}), tasks) == tuple(t.name for t in tasks)
    with pytest.raises(MossaError, match=r"^field 'ceiling_tasks': nope not among the study's tasks"):
        resolve_ceiling(resolve_config({"ceiling_tasks": ["nope"]}), tasks)


def test_task_choices_name_the_field(tiny_tasks):
    tasks = load_tasks(tiny_tasks)
    check_task_choices(resolve_config({"preset": "quick"}), tasks)
    for field in ("holdout", "ceiling_tasks", "causal_tasks"):
        with pytest.raises(MossaError, match=rf"^field '{field}': nope not among the study's tasks"):
            check_task_choices(resolve_config({"preset": "quick", field: ["nope"]}), tasks)
    with pytest.raises(MossaError, match=r"^field 'task_budgets': nope not among the study's tasks"):
        check_task_choices(resolve_config({"preset": "quick", "task_budgets": {"nope": {"epochs": 2}}}), tasks)
    demo = resolve_config({"preset": "demo", "holdout": "none", "causal_tasks": "all"})
    check_task_choices(demo, tasks)  # the demo preset's own budgets, for tasks this study does not have
    with pytest.raises(MossaError, match=r"^field 'task_budgets': cb not among"):
        check_task_choices(demo.model_copy(update={"task_budgets": {"cb": {"n_train": 8}}}), tasks)


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_cross_tasks_are_seeded_and_come_from_other_clusters_first():
    from mossa.tasks import resolve_cross_tasks

    tasks = load_tasks(FLAN_MINI)
    cluster = {t.name: t.cluster for t in tasks}
    chosen = resolve_cross_tasks(resolve_config({"seed": 0, "cross_tasks": 3}), tasks)
    assert set(chosen) == set(cluster)
    for task, sources in chosen.items():
        assert len(sources) == 3 and task not in sources
        assert len({cluster[s] for s in sources} | {cluster[task]}) == 4  # three other clusters, one each
    assert chosen == resolve_cross_tasks(resolve_config({"seed": 0, "cross_tasks": 3}), tasks)
    assert chosen != resolve_cross_tasks(resolve_config({"seed": 1, "cross_tasks": 3}), tasks)
    every = resolve_cross_tasks(resolve_config({"cross_tasks": "all"}), tasks)
    assert all(len(s) == len(tasks) - 1 for s in every.values())
    assert resolve_cross_tasks(resolve_config({"cross_tasks": "none"}), tasks) == {}


def test_cross_tasks_fall_back_on_the_own_cluster_and_stop_at_the_other_tasks(tiny_tasks):
    from mossa.tasks import resolve_cross_tasks

    tasks = load_tasks(tiny_tasks)
    chosen = resolve_cross_tasks(resolve_config({"cross_tasks": 50}), tasks)
    assert all(len(s) == len(tasks) - 1 for s in chosen.values())
    one = resolve_cross_tasks(resolve_config({"cross_tasks": 1}), tasks[:1])
    assert one == {tasks[0].name: ()}
