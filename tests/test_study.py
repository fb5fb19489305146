import pytest

from mossa.config import DEMO_TASKS, resolve_config
from mossa.study import resolve_holdout
from mossa.tasks import load_tasks
from tests.conftest import FLAN_MINI


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_holdout_takes_one_task_from_each_of_seven_clusters():
    tasks = load_tasks(FLAN_MINI, DEMO_TASKS)
    cluster = {t.name: t.cluster for t in tasks}
    held = resolve_holdout(resolve_config({"seed": 0}), tasks)
    assert len(held) == 7 and len({cluster[t] for t in held}) == 7
    assert held == resolve_holdout(resolve_config({"seed": 0}), tasks)
    assert held != resolve_holdout(resolve_config({"seed": 1}), tasks)
    assert resolve_holdout(resolve_config({"holdout": "none"}), tasks) == ()


def test_auto_holdout_never_takes_every_task(tiny_tasks):
    tasks = load_tasks(tiny_tasks)
    assert len(resolve_holdout(resolve_config({"preset": "demo"}), tasks)) == 1
