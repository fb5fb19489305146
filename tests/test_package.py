"""Meta tests: the public API is consistent and every stage has tests beside it."""

import importlib
import pkgutil
from pathlib import Path

import mossa

SRC = Path(mossa.__file__).parent
TESTS = Path(__file__).parent


def test_every_all_name_exists():
    for info in pkgutil.walk_packages([str(SRC)], prefix="mossa."):
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def test_every_subpackage_and_stage_module_has_tests():
    for entry in SRC.iterdir():
        if entry.is_dir() and (entry / "__init__.py").exists():
            assert list((TESTS / entry.name).glob("test_*.py")), f"no tests/{entry.name}/test_*.py"
    for stage in ("config", "store", "training", "extraction", "cli"):
        assert (TESTS / f"test_{stage}.py").exists(), stage


def _room(module: str) -> str:
    """The room a module of mossa lives in: its subpackage or top-level module (mossa.units._run -> units)."""
    return module.split(".")[1]


def _room_imports() -> dict[str, dict[str, str]]:
    """Room -> {room it imports: where}, from every import statement in src/mossa, those inside functions and
    under TYPE_CHECKING included."""
    import ast

    edges: dict[str, dict[str, str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts == ("mossa", "__init__"):
            continue
        source = _room(".".join(parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mossa":
                names = [f"mossa.{a.name}" for a in node.names] if node.module == "mossa" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "mossa"]
            else:
                continue
            for name in names:
                if "." in name and _room(name) != source:
                    edges.setdefault(source, {}).setdefault(_room(name), f"{path.relative_to(SRC)}:{node.lineno}")
    return edges


def test_no_import_cycle_between_rooms():
    """Rooms depend on each other in one direction only: a depth-first search finds no path back."""
    edges = _room_imports()
    assert "units" in edges["study"] and "workers" in edges["probes"]  # the scan sees imports
    state: dict[str, str] = {}

    def visit(room: str, path: list[str]) -> None:
        state[room] = "open"
        for nxt in sorted(edges.get(room, {})):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                where = [edges[a][b] for a, b in zip(cycle, cycle[1:])]
                raise AssertionError(f"import cycle {' -> '.join(cycle)} ({', '.join(where)})")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[room] = "done"

    for room in sorted(edges):
        if room not in state:
            visit(room, [room])


def test_study_only_schedules_and_classes_stay_small():
    import ast

    assert len((SRC / "study.py").read_text(encoding="utf-8").splitlines()) < 300
    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(SRC.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200]
    assert not long, long
