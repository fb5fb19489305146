import numpy as np
import pytest

from mossa.config import LoraSettings, TrainSettings
from mossa.extraction import extract
from mossa.models import load_model, resolve_model
from mossa.models import AdapterHost
from mossa.tasks import Prompt, PromptBuilder, load_tasks
from mossa.training import examples_seen, lr_factor, mixture, n_steps, parity_stream, train_adapter


def _p(task, i):
    return Prompt(f"{task}:{i}", [1], [2], 0, task=task)


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


def test_examples_seen_and_steps_follow_epochs_and_the_step_cap():
    s = TrainSettings(epochs=1, batch_size=8, grad_accum=1)
    assert examples_seen(80, s) == 80 and n_steps(80, s) == 10
    assert examples_seen(70, s) == 70 and n_steps(70, s) == 9  # the last step holds 6
    assert examples_seen(70, s.model_copy(update={"max_steps": 4})) == 32


def test_parity_gives_each_task_what_its_control_sees():
    control = TrainSettings(epochs=1.5, batch_size=8, grad_accum=1)
    train = {"a": [_p("a", i) for i in range(80)], "b": [_p("b", i) for i in range(40)],
             "c": [_p("c", i) for i in range(60)]}
    clusters = {"a": "X", "b": "Y", "c": "Y"}
    stream = parity_stream(train, clusters, control=control, cap=10_000, seed=0)
    count = {t: sum(p.task == t for p in stream) for t in train}
    assert count == {t: examples_seen(len(train[t]), control) for t in train} == {"a": 120, "b": 60, "c": 90}
    for t in train:  # every example once, then the half pass: no example more than twice
        seen = [p.id for p in stream if p.task == t]
        assert set(seen) == {p.id for p in train[t]} and max(seen.count(i) for i in set(seen)) == 2
    capped = parity_stream(train, clusters, control=control, cap=50, seed=0)  # X: 50 of a; Y: 20 of b, 30 of c
    assert {t: sum(p.task == t for p in capped) for t in train} == {"a": 75, "b": 30, "c": 45}


def test_warmup_never_runs_a_step_at_zero_and_schedules_end_near_zero():
    assert lr_factor(0, 10, 1, "cosine") == 0.5
    assert [round(lr_factor(s, 10, 3, "linear"), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(0, 10, 0, "cosine") == 1.0 and 0 < lr_factor(9, 10, 0, "cosine") < 0.05
    assert all(lr_factor(s, 10, 2, sched) > 0 for s in range(10) for sched in ("cosine", "linear", "constant"))


def _trained(tiny_model, tiny_tasks, dtype, settings):
    loaded = load_model(resolve_model(str(tiny_model)), dtype=dtype, device="cpu")
    task = load_tasks(tiny_tasks, ["tiny_sentiment"])[0]
    build = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=64, max_target_tokens=8)
    train = build.build_all(task, task.split("train"))
    return loaded, train, train_adapter(AdapterHost(loaded), "ctl", train, settings=settings, lora=LoraSettings(),
                                        seed=0)


def test_first_step_of_a_warmed_up_unit_has_a_positive_learning_rate(tiny_model, tiny_tasks):
    settings = TrainSettings(lr=1e-3, epochs=2, batch_size=4, grad_accum=1, schedule="cosine", warmup_ratio=0.1)
    _, train, log = _trained(tiny_model, tiny_tasks, "float32", settings)
    assert log["steps"] == 12 and len(log["lr"]) == 12
    assert log["lr"][0] == pytest.approx(1e-3 / 2) and log["lr"][1] == pytest.approx(1e-3)
    assert log["examples_seen"] == {"tiny_sentiment": 2 * len(train)}
    assert log["distinct_examples"] == {"tiny_sentiment": len(train)}


def test_fp16_training_uses_the_gradient_scaler_and_takes_finite_steps(tiny_model, tiny_tasks, monkeypatch):
    import torch

    scaled = []
    original = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale",
                        lambda self, x: scaled.append(self.is_enabled()) or original(self, x))
    settings = TrainSettings(lr=1e-2, epochs=1, batch_size=8, grad_accum=2, schedule="constant")
    loaded, _, log = _trained(tiny_model, tiny_tasks, "float16", settings)
    assert loaded.dtype == torch.float16 and scaled and all(scaled)
    assert np.isfinite(log["train_loss"]).all()
    lora = [p for n, p in loaded.model.named_parameters() if "lora_" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora) and all(p.dtype == torch.float32 for p in lora)


def test_tokens_seen_counts_every_pass_and_the_step_cap():
    from types import SimpleNamespace

    from mossa.training import tokens_seen

    prompts = [SimpleNamespace(prompt_ids=[1] * n, target_ids=[2] * 2) for n in (6, 10)]  # 8 and 12 tokens
    s = TrainSettings(epochs=2, batch_size=1, grad_accum=1)
    assert tokens_seen(prompts, s, seed=0, unit="u") == 40  # two passes over 20 tokens
    firsts = {tokens_seen(prompts, s.model_copy(update={"max_steps": 1}), seed=seed, unit="u") for seed in range(20)}
    assert firsts == {8, 12}  # one example, whichever the unit's seeded order puts first
    assert tokens_seen([], s, seed=0, unit="u") == 0


def test_tokens_seen_equals_the_training_logs_count(tiny_model, tiny_tasks):
    from mossa.training import tokens_seen

    settings = TrainSettings(lr=1e-3, epochs=1.5, batch_size=3, grad_accum=1)
    loaded, train, log = _trained(tiny_model, tiny_tasks, "float32", settings)  # a cut last pass: which examples is the order's
    assert log["tokens"] == tokens_seen(train, settings, seed=0, unit="ctl")
    assert log["tokens"] != tokens_seen(train, settings, seed=1, unit="ctl")
