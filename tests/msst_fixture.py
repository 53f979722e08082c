"""tests/data/msst/make_fixture.py as a module: its tensors and inputs are functions of names and seeds."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parent / "data" / "msst" / "make_fixture.py"


def make_fixture():
    spec = importlib.util.spec_from_file_location("msst_make_fixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
