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
