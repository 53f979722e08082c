"""The arrows point one way: reading a model (umx-separate, umx-eval, umx-plot) never imports the
training stack; the model directory's format lives in the model layer (umx/models/directory.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from umx.train import TrainConfig, train

TINY = dict(hidden_size=8, seq_dur=0.5, batch_size=3, nfft=1024, nhop=512, epochs=1, quiet=True)


def _train_modules(code: str) -> list[str]:
    """The umx.train modules a fresh interpreter has imported after running `code`."""
    probe = code + "\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith('umx.train')))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return eval(r.stdout.strip().splitlines()[-1])


def test_reading_commands_do_not_import_training():
    """`python -X importtime`: the reading commands and the model layer import nothing of umx.train."""
    code = "import umx.separate, umx.evaluate, umx.evaluate_cli, umx.plot, umx.models.registry, umx.models.openunmix"
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "umx.separate" in imported and "umx.models.openunmix" in imported
    assert [m for m in imported if m.startswith("umx.train")] == []


def test_separating_and_plotting_a_model_directory_import_no_training(shard_set, tmp_path):
    out = tmp_path / "m"
    train(TrainConfig(shards=str(shard_set), output=str(out), **TINY))
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from pathlib import Path
        from umx.models.protocol import SeparationOptions
        from umx.models.registry import load_separation
        from umx import plot
        sep = load_separation(Path({str(out)!r}), None, SeparationOptions(residual=True), "cpu")
        est = sep(torch.zeros(1, 2, 44100))
        assert est.shape[:2] == (1, 2)
        plot.main([{str(out)!r}, "--target", "vocals"])
    """)
    assert _train_modules(code) == []


def _import_graph() -> dict[str, set[str]]:
    """umx's modules → the umx modules each imports, at the top or inside a function."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "umx"
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}

    def targets(module: str, node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name in files]
        package = module if files[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        return [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names
                if f"{target}.{a.name}" in files or target in files]

    return {m: {t for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                for t in targets(m, node) if t != m} for m, p in files.items()}


def test_no_module_imports_one_that_imports_it_back():
    """No import cycles between modules (a package's __init__ re-exporting aside): build and trainer
    used to import each other."""
    graph = _import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    modules = [m for m in graph if not (m.count(".") and m.rsplit(".", 1)[1] == "__init__")]
    packages = {m for m in graph if any(o.startswith(m + ".") for o in graph)}
    cycles = sorted({tuple(sorted((a, b))) for a in modules if a not in packages for b in graph[a]
                     if b not in packages and reaches(b, a)})
    assert cycles == []


def test_the_model_layer_and_readers_never_import_training():
    """Statically, lazy imports included: the model layer, the data formats and the reading commands."""
    graph = _import_graph()
    readers = [m for m in graph if m.startswith(("umx.models", "umx.shards", "umx.layouts"))
               or m in ("umx.separate", "umx.evaluate", "umx.evaluate_cli", "umx.plot", "umx.filtering",
                        "umx.bss", "umx.audio", "umx.names")]
    assert {m: sorted(d for d in graph[m] if d.startswith("umx.train")) for m in readers
            if any(d.startswith("umx.train") for d in graph[m])} == {}
