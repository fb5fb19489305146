import pytest

from mossa.errors import MossaError
from mossa.models import check_model_available, registered_models, resolve_model


def test_embedded_models_are_registered():
    assert {"gemma-3-270m", "smollm2-135m-instruct"} <= set(registered_models())
    assert resolve_model("gemma-3-270m").kind == "embedded"


def test_unknown_model_lists_close_names():
    with pytest.raises(MossaError, match=r"unknown model 'gemma-3-207m'.*did you mean gemma-3-270m"):
        resolve_model("gemma-3-207m")


def test_local_folder_and_bad_folder(tiny_model, tmp_path):
    assert resolve_model(str(tiny_model)).kind == "hf_dir"
    with pytest.raises(MossaError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(MossaError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "x.gguf"))


def test_hub_id_offline_fails_with_a_clear_message():
    source = resolve_model("some-org/some-model-that-is-not-cached")
    assert source.kind == "hub"
    with pytest.raises(MossaError, match="cannot load it from the hub or the local HF cache"):
        check_model_available(source)


def test_cpu_dtype_choice_is_measured_once_and_kept(monkeypatch, tmp_path):
    import torch

    from mossa.models import _loading

    monkeypatch.setenv("MOSSA_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(_loading, "_measure_bf16_speedup", lambda: calls.append(1) or 0.5)
    first = _loading.pick_dtype("auto", torch.device("cpu"))
    monkeypatch.setattr(_loading, "_measure_bf16_speedup", lambda: calls.append(1) or 3.0)
    assert _loading.pick_dtype("auto", torch.device("cpu")) == first
    assert first[0] == torch.float32 and len(calls) == 1
    assert _loading.pick_dtype("bfloat16", torch.device("cpu"))[0] == torch.bfloat16
