import numpy as np

from mossa.config import LoraSettings, TrainSettings
from mossa.extraction import extract
from mossa.models import load_model, resolve_model
from mossa.models._adapters import AdapterHost
from mossa.tasks import Prompt, PromptBuilder, load_tasks
from mossa.training import mixture, n_steps, train_adapter


def _p(task, i):
    return Prompt(f"{task}:{i}", [1], [2], 0)


def test_mixture_caps_clusters_proportionally():
    train = {"a": [_p("a", i) for i in range(300)], "b": [_p("b", i) for i in range(100)],
             "c": [_p("c", i) for i in range(50)]}
    clusters = {"a": "X", "b": "X", "c": "Y"}
    mix = mixture(train, clusters, cap=200, seed=0)
    count = {t: sum(p.id.startswith(t + ":") for p in mix) for t in train}
    assert count == {"a": 150, "b": 50, "c": 50}
    assert len({p.id for p in mix}) == len(mix)
    assert [p.id for p in mixture(train, clusters, cap=200, seed=0)] == [p.id for p in mix]


def test_n_steps_epochs_and_cap():
    s = TrainSettings(epochs=3, batch_size=4, grad_accum=4)
    assert n_steps(100, s) == 19
    assert n_steps(100, s.model_copy(update={"max_steps": 5})) == 5


def test_control_learns_its_task(tiny_model, tiny_tasks):
    loaded = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    task = load_tasks(tiny_tasks, ["tiny_sentiment"])[0]
    build = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=64, max_target_tokens=8)
    train, test = build.build_all(task, task.split("train")), build.build_all(task, task.split("test"))
    host = AdapterHost(loaded)
    before = extract(host, None, test, token_budget=512)
    settings = TrainSettings(lr=2e-2, epochs=100, max_steps=15, batch_size=8, grad_accum=1, schedule="constant")
    log = train_adapter(host, "ctl", train, settings=settings, lora=LoraSettings(), seed=0)
    after = extract(host, "ctl", test, token_budget=512)
    assert log["steps"] == 15 and log["train_loss"][-1] < log["train_loss"][0]
    assert after.target_nll.sum() < 0.95 * before.target_nll.sum()  # a 16-wide model learns slowly
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert np.isfinite(after.acts).all()
