import numpy as np
import pytest

from mossa.config import LoraSettings
from mossa.extraction import extract
from mossa.models import AdapterHost


@pytest.fixture()
def setup(sentiment_prompts):
    loaded, prompts = sentiment_prompts
    return AdapterHost(loaded), prompts


def test_shapes_ids_and_constant_cue_layer(setup):
    host, prompts = setup
    acts = extract(host, None, prompts, token_budget=64)
    n_layers = host.loaded.n_layers
    assert acts.acts.shape == (n_layers + 1, len(prompts), host.loaded.hidden_size)
    assert acts.ids == [p.id for p in prompts]
    # layer 0 at the last prompt token is the embedding of the shared cue token
    assert np.allclose(acts.acts[0], acts.acts[0][0])
    assert not np.allclose(acts.acts[1], acts.acts[1][0])
    assert (acts.target_tokens == [len(p.target_ids) for p in prompts]).all()
    assert np.isfinite(acts.target_nll).all() and (acts.target_nll > 0).all()


def test_batching_does_not_change_results(setup):
    host, prompts = setup
    a = extract(host, None, prompts, token_budget=16)
    b = extract(host, None, prompts, token_budget=4096)
    np.testing.assert_allclose(a.acts, b.acts, atol=1e-5)
    np.testing.assert_allclose(a.target_nll, b.target_nll, atol=1e-5)


def test_fresh_adapter_equals_base_and_swapping_restores_base(setup):
    host, prompts = setup
    base = extract(host, None, prompts, token_budget=256)
    host.add("c", LoraSettings(), seed=0)  # LoRA B starts at zero: same function as the base
    np.testing.assert_allclose(extract(host, "c", prompts, token_budget=256).acts, base.acts, atol=1e-6)
    for name, p in host.peft.named_parameters():
        if ".c." in name:
            p.data.add_(0.5)
    moved = extract(host, "c", prompts, token_budget=256)
    assert not np.allclose(moved.acts[-1], base.acts[-1], atol=1e-3)
    np.testing.assert_allclose(extract(host, None, prompts, token_budget=256).acts, base.acts, atol=1e-6)


def test_pre_norm_last_layer_differs_only_at_the_top(setup):
    host, prompts = setup
    post = extract(host, None, prompts, token_budget=256, last_layer="post_norm")
    pre = extract(host, None, prompts, token_budget=256, last_layer="pre_norm")
    np.testing.assert_allclose(pre.acts[:-1], post.acts[:-1], atol=1e-6)
    assert not np.allclose(pre.acts[-1], post.acts[-1])


def test_streaming_to_the_store_equals_in_memory(setup, tmp_path):
    from mossa.store import StudyDir

    host, prompts = setup
    ref = extract(host, None, prompts, token_budget=48)
    loaded = host.loaded
    study = StudyDir(tmp_path)
    with study.activation_writer("base", "t", ids=[p.id for p in prompts], n_states=loaded.n_layers + 1,
                                 hidden=loaded.hidden_size, inputs="k") as sink:
        assert extract(host, None, prompts, token_budget=48, sink=sink) is None
    back = study.read_activations("base", "t")
    np.testing.assert_array_equal(back.acts, ref.acts)
    np.testing.assert_array_equal(back.target_nll, ref.target_nll)


def test_states_without_loss_skip_the_targets(setup):
    host, prompts = setup
    with_loss = extract(host, None, prompts, token_budget=256)
    states_only = extract(host, None, prompts, token_budget=256, evaluate=False)
    np.testing.assert_allclose(states_only.acts, with_loss.acts, atol=1e-5)  # causal: targets unseen
    assert np.isnan(states_only.target_nll).all() and (states_only.target_tokens == 0).all()


def test_loss_on_the_first_prompts_only(setup):
    """eval_rows: the first k prompts are scored exactly as in a full run, the rest only give states,
    and the mean loss is over the scored targets alone."""
    from mossa.analysis._similarity import mean_loss

    host, prompts = setup
    full = extract(host, None, prompts, token_budget=256)
    k = len(prompts) // 2
    part = extract(host, None, prompts, token_budget=256, eval_rows=k)
    np.testing.assert_allclose(part.acts, full.acts, atol=1e-5)
    np.testing.assert_allclose(part.target_nll[:k], full.target_nll[:k], atol=1e-5)
    assert (part.target_tokens[:k] == full.target_tokens[:k]).all() and (part.target_tokens[k:] == 0).all()
    assert np.isnan(part.target_nll[k:]).all()
    expected = full.target_nll[:k].sum() / full.target_tokens[:k].sum()
    assert abs(mean_loss(part) - expected) < 1e-6 and mean_loss(part) != mean_loss(full)


def test_greedy_answers_on_the_first_generate_rows_only(tiny_model, tiny_tasks):
    """generate_rows: in a task without options the first k prompts are evaluated (answered and
    scored) exactly as in a full run, the rest give states alone."""
    from mossa.models import load_model, resolve_model
    from mossa.tasks import PromptBuilder, load_tasks

    loaded = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    task = load_tasks(tiny_tasks, ["tiny_struct"])[0]
    prompts = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=64,
                            max_target_tokens=8).build_all(task, task.split("test"))
    host = AdapterHost(loaded)
    full = extract(host, None, prompts, token_budget=256)
    k = len(prompts) // 2
    part = extract(host, None, prompts, token_budget=256, generate_rows=k)
    assert part.evaluation["rows"] == list(range(k)) and all(isinstance(g, str) for g in full.evaluation["generated"])
    assert part.evaluation["generated"] == full.evaluation["generated"][:k]
    np.testing.assert_allclose(part.target_nll[:k], full.target_nll[:k], atol=1e-5)
    assert np.isnan(part.target_nll[k:]).all()
    np.testing.assert_allclose(part.acts, full.acts, atol=1e-5)


def test_lens_on_the_first_lens_rows_only(setup):
    """lens_rows: the lens reads the first k evaluated prompts, as in a full run; every evaluated
    prompt is still scored."""
    host, prompts = setup
    full = extract(host, None, prompts, token_budget=256).evaluation
    k = len(prompts) // 2
    part = extract(host, None, prompts, token_budget=256, lens_rows=k).evaluation
    for key in ("logprob", "rank"):
        got, want = np.asarray(part["lens"][key]), np.asarray(full["lens"][key])
        assert got.shape == (want.shape[0], k)
        np.testing.assert_allclose(got, want[:, :k], atol=1e-5)
    np.testing.assert_allclose(part["option_loglik"], full["option_loglik"], atol=1e-5)
