"""Inputs that mean what the study claims: one prompt format for every model, templates by fit,
budget parity between E and its controls, and the prompt counts a study records."""

import hashlib
import json

import pytest

from mossa.cli import main
from mossa.store import StudyDir
from tests.conftest import build_tiny_model

E_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>{% endfor %}"
              "{% if add_generation_prompt %} assistant :{% endif %}")


@pytest.fixture(scope="module")
def instruct_model(tmp_path_factory):
    """A released 'instruct' model as E: 3 layers, d=24, with a chat template of its own."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-instruct"), n_layers=3, hidden=24, chat_template=E_TEMPLATE)


def _run(tiny_model, tiny_tasks, out, *extra):
    return main(["run", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick",
                 "--tasks", "tiny_sentiment,tiny_struct", "--out", str(out), "--measures", "linear_cka",
                 "--n-boot", "0", *extra])


def _texts(out, task):
    rows = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows if r["task"] == task]


@pytest.mark.parametrize("fmt", [("--prompt-format", "plain"), ("--prompt-format", "chat", "--chat-template",
                                                                 "llama-2")])
def test_a_given_e_reads_the_same_prompt_text_as_b(tiny_model, tiny_tasks, instruct_model, tmp_path, fmt):
    out = tmp_path / "study"
    config = tmp_path / "long.yaml"
    config.write_text("max_prompt_tokens: 256\n")  # room for Llama-2's default system prompt
    assert _run(tiny_model, tiny_tasks, out, "--experimental", str(instruct_model), "--config", str(config),
                *fmt) == 0
    study = json.loads((out / "study.json").read_text())
    dirs = StudyDir(out)
    for task in ("tiny_sentiment", "tiny_struct"):
        base = dirs.activation_file("base", task).meta
        given = dirs.activation_file("experimental", task).meta
        control = dirs.activation_file("control", task).meta
        texts = _texts(out, task)
        assert base["prompt_text_sha256"] == given["prompt_text_sha256"] == control["prompt_text_sha256"] \
            == hashlib.sha256("\0".join(texts).encode()).hexdigest()
        assert base["prompt_format"] == given["prompt_format"] == study["prompt_format"]
    if "llama-2" in fmt:
        assert study["prompt_format"]["chat_template"] == "llama-2"
        assert all(t.startswith("[INST] <<SYS>>\nYou are a helpful") and t.endswith(" [/INST]")
                   for t in _texts(out, "tiny_struct"))
    else:
        assert study["prompt_format"] == {"mode": "plain", "cue": "Answer:", "system_prompt": None}
    assert "prompt format" in (out / "report.html").read_text()


def test_a_given_e_told_to_use_its_own_format_reads_its_chat_template(tiny_model, tiny_tasks, instruct_model,
                                                                      tmp_path):
    out = tmp_path / "study"
    config = tmp_path / "own.yaml"
    config.write_text("experimental_prompt_format: own\n")
    assert _run(tiny_model, tiny_tasks, out, "--experimental", str(instruct_model), "--config", str(config)) == 0
    dirs = StudyDir(out)
    base, given = (dirs.activation_file(m, "tiny_sentiment").meta for m in ("base", "experimental"))
    assert base["prompt_format"]["mode"] == "plain" and given["prompt_format"]["mode"] == "chat"
    assert base["prompt_text_sha256"] != given["prompt_text_sha256"]


def test_a_chat_template_file_wraps_the_base_models_prompts(tiny_model, tiny_tasks, tmp_path):
    template = tmp_path / "turns.jinja"
    template.write_text(E_TEMPLATE)
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, "--prompt-format", "chat", "--chat-template", str(template),
                "--system-prompt", "Answer briefly.") == 0
    texts = _texts(out, "tiny_sentiment")
    assert texts and all(t.startswith("<s> system : Answer briefly. </s><s> user : ") for t in texts)
    assert all(t.endswith("</s> assistant :") for t in texts)
    study = json.loads((out / "study.json").read_text())
    assert study["prompt_format"]["chat_template"] == "file:turns.jinja"


def test_e_sees_each_task_as_often_as_its_control_and_counts_are_recorded(tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, "--holdout", "tiny_struct") == 0
    study = json.loads((out / "study.json").read_text())
    training = study["training"]
    for task in ("tiny_sentiment", "tiny_struct"):
        control = training[f"control-{task}"]
        assert control["examples_seen"] == {task: 8}  # quick: 2 steps of 4
        assert training["experimental"]["examples_seen"][task] == control["examples_seen"][task]
    assert training["heldout"]["examples_seen"] == {"tiny_sentiment": 8}  # E' never sees the held-out task
    assert study["config"]["experimental_budget"] == "parity" and study["training_budget"]["rule"] == "parity"
    assert study["training_budget"]["control_examples_seen"] == {"tiny_sentiment": 8, "tiny_struct": 8}
    assert study["tasks"]["tiny_sentiment"]["properties"]["train_size"] == 8  # what C_t saw, not the split
    prompts = study["tasks"]["tiny_sentiment"]["prompts"]
    assert set(prompts) == {"train", "test"}
    assert {"n", "examined", "left_out", "cut", "uncut_share", "kept_median", "templates"} <= set(prompts["test"])


def test_a_task_named_like_a_written_template_but_with_other_fields_gets_the_generic_one(tiny_model, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = [{"input": {"text": f"the film was {w}"}, "target": w, "split": s}
            for i, w in enumerate(["good", "bad"] * 12) for s in (["train", "test"][i % 2],)]
    (folder / "sst2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "anli_r1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # a hub table name
    out = tmp_path / "study"
    assert main(["run", "--model", str(tiny_model), "--tasks-dir", str(folder), "--preset", "quick", "--out",
                 str(out), "--measures", "linear_cka", "--n-boot", "0"]) == 0
    study = json.loads((out / "study.json").read_text())
    for task in ("sst2", "anli_r1"):
        assert study["tasks"][task]["template"].startswith("generic template: the written templates")
        assert study["tasks"][task]["n_templates"] == 1
    assert "generic template" in (out / "report.html").read_text()


def test_an_earlier_configs_test_loss_evaluates_every_model_but_the_ceiling(tiny_model, tiny_tasks, tmp_path):
    """test_loss (an earlier setting) left E and E' unscored; every model but C_t' is evaluated now, and
    its loss_examples are the evaluated rows."""
    import pandas as pd

    out = tmp_path / "study"
    config = tmp_path / "states.yaml"
    config.write_text("test_loss: base_and_controls\nloss_examples: 6\n")
    assert _run(tiny_model, tiny_tasks, out, "--holdout", "tiny_struct", "--config", str(config)) == 0
    dirs = StudyDir(out)
    for model, task in (("experimental", "tiny_sentiment"), ("heldout", "tiny_struct"), ("base", "tiny_sentiment"),
                        ("control", "tiny_struct")):
        file = dirs.activation_file(model, task)
        assert file.meta["evaluated"] is True and file.meta["eval_examples"] == 6
        assert len(file.evaluation["rows"]) == 6 and (file.target_tokens[6:] == 0).all()
    performance = pd.read_csv(out / "results/performance.csv")
    assert set(performance["model"]) == {"base", "experimental", "heldout", "control"}
    assert (performance["n_examples"] <= 6).all()
    controls = pd.read_csv(out / "results/controls.csv")
    assert controls[["base", "control", "experimental"]].notna().all().all()
    assert {"task_metric", "gain", "gain_low", "gain_high", "learned"} <= set(controls.columns)

def test_a_task_budget_sets_its_control_and_e_follows_it_by_parity(tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "study"
    config = tmp_path / "budgets.yaml"
    config.write_text("control: {max_steps: null, epochs: 1}\n"
                      "task_budgets: {tiny_struct: {n_train: 8, epochs: 3, lr: 0.001}}\n")
    assert _run(tiny_model, tiny_tasks, out, "--holdout", "none", "--config", str(config)) == 0
    study = json.loads((out / "study.json").read_text())
    training = study["training"]
    assert study["tasks"]["tiny_struct"]["n_train"] == 8 and study["tasks"]["tiny_sentiment"]["n_train"] == 16
    assert training["control-tiny_struct"]["examples_seen"] == {"tiny_struct": 24}  # 8 examples, 3 passes
    assert training["control-tiny_sentiment"]["examples_seen"] == {"tiny_sentiment": 16}  # the study's budget
    assert max(training["control-tiny_struct"]["lr"]) == pytest.approx(0.001)
    assert max(training["control-tiny_sentiment"]["lr"]) == pytest.approx(2e-3)
    assert training["experimental"]["examples_seen"] == {"tiny_struct": 24, "tiny_sentiment": 16}
    assert study["training_budget"]["control_examples_seen"] == {"tiny_sentiment": 16, "tiny_struct": 24}
    assert "tiny_struct: n_train 8, epochs 3, lr 0.001" in (out / "report.html").read_text()


def test_a_budget_for_a_task_the_study_lacks_is_refused_naming_the_field(tiny_model, tiny_tasks, tmp_path, capsys):
    config = tmp_path / "budgets.yaml"
    config.write_text("task_budgets: {no_such_task: {epochs: 3}}\n")
    assert _run(tiny_model, tiny_tasks, tmp_path / "study", "--config", str(config)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task_budgets" in err[0] and "no_such_task" in err[0]
    assert not (tmp_path / "study").exists()


def test_e_prime_can_keep_one_seed_while_e_has_two(tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "study"
    config = tmp_path / "seeds.yaml"
    config.write_text("experimental_seeds: 2\nheldout_seeds: 1\n")
    assert _run(tiny_model, tiny_tasks, out, "--holdout", "tiny_struct", "--config", str(config)) == 0
    study = json.loads((out / "study.json").read_text())
    assert {"experimental", "experimental_seed2", "heldout"} <= set(study["training"])
    assert "heldout_seed2" not in study["training"] and study["heldout_seeds"] == 1
    import pandas as pd

    models = set(pd.read_parquet(out / "results" / "similarity.parquet")["model"])
    assert {"experimental_seed2", "heldout"} <= models and "heldout_seed2" not in models
