"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case fails before any work with exit
code 2 and one `mossa: error:` line naming the file, line or field; no traceback, nothing written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mossa.cli import main
from tests.conftest import write_tiny_tasks

CORPUS = Path(__file__).parent / "bad_inputs"
MANIFEST = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
CASES = MANIFEST["cases"]
BIG_LINE = 10 * 1024 * 1024  # characters in the 10 MB line

GENERATED = {
    "empty": lambda: b"",
    "non_utf8_jsonl": lambda: ('{"input": "a fine movie", "target": "positive"}\n'
                               '{"input": "un caf\u00e9 froid", "target": "negative"}\n').encode("latin-1"),
    "big_line_truncated": lambda: b'{"input": "a fine movie", "target": "positive"}\n{"input": "'
                                  + b"x" * BIG_LINE + b"\n",
    "deep_nesting": lambda: b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "huge_int": lambda: b'{"input": "x", "target": "y", "id": ' + b"9" * 5000 + b"}\n",
    "latin1_yaml": lambda: 'cue: "R\u00e9ponse:"\n'.encode("latin-1"),
}


def _fill(text: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", value)
    return text


def _setup(case: dict, tmp: Path, model: Path) -> list[str]:
    """Write the case's inputs into `tmp`; return its argv with the template fields filled."""
    args = ([] if case.get("prefix") is False else MANIFEST["prefix"]) + case["args"]
    places = {"model": str(model), "out": str(tmp / "out"), "tasks": str(tmp / "tasks"), "tmp": str(tmp)}
    if any("{tasks}" in a for a in args):
        write_tiny_tasks(tmp / "tasks")
    for dest, source in (case.get("files") or {}).items():
        target = tmp / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.startswith("gen:"):
            target.write_bytes(GENERATED[source[4:]]())
        else:
            shutil.copyfile(CORPUS / source, target)
    for folder in case.get("dirs") or ():
        (tmp / folder).mkdir(parents=True)
    return [_fill(a, places) for a in args]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _param(case: dict):
    marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if case.get("xfail") else []
    return pytest.param(case, id=case["name"], marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_fails_cleanly(case, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MOSSA_DEBUG", raising=False)
    argv = _setup(case, tmp_path, tiny_model)
    before, model_before = _snapshot(tmp_path), _snapshot(tiny_model)
    monkeypatch.chdir(tmp_path)  # a stray relative write (e.g. runs/<timestamp>) would land here
    if case.get("subprocess"):
        proc = subprocess.run([sys.executable, "-m", "mossa.cli", *argv], capture_output=True, text=True, check=False,
                              env={**os.environ, "COLUMNS": "80"}, timeout=120)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = main(argv), capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mossa: error: "), (code, err)
    assert re.search(case["error"], lines[0]), lines[0]
    assert not (tmp_path / "out").exists()
    assert _snapshot(tmp_path) == before and _snapshot(tiny_model) == model_before


def test_corpus_is_well_formed():
    names = [c["name"] for c in CASES]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert sum(bool(c.get("subprocess")) for c in CASES) >= 3
    for case in CASES:
        assert set(case) <= {"name", "files", "dirs", "args", "error", "prefix", "subprocess", "xfail"}, case["name"]
        re.compile(case["error"])
        for source in (case.get("files") or {}).values():
            assert source[4:] in GENERATED if source.startswith("gen:") else (CORPUS / source).is_file(), source


def test_a_ten_mb_line_of_valid_json_is_accepted(tmp_path, capsys):
    """Line length has no limit: a valid 10 MB row loads (prompts are cut to max_prompt_tokens later)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = [b'{"input": "' + b"x " * (BIG_LINE // 2) + b'", "target": "long", "split": "train"}',
            b'{"input": "short", "target": "brief", "split": "test"}']
    (folder / "long_input.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    assert main(["tasks", "list", "--tasks-dir", str(folder)]) == 0
    assert "long_input" in capsys.readouterr().out
