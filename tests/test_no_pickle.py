"""No pickle anywhere: a bundle or a request must never be able to run code when it is loaded."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def violations(source: str, name: str = "<source>") -> list[str]:
    """Imports of pickle-like modules; numpy.load without allow_pickle=False; torch.load without weights_only=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{name}:{node.lineno}: imports {module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            keywords = {k.arg: k.value for k in node.keywords}
            target = node.func.value
            owner = target.id if isinstance(target, ast.Name) else ""
            if node.func.attr == "load" and owner in {"np", "numpy"}:
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{name}:{node.lineno}: numpy.load without allow_pickle=False")
            if node.func.attr == "load" and owner == "torch":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{name}:{node.lineno}: torch.load without weights_only=True")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    bad = "import pickle\nfrom joblib import load\nimport numpy as np\nnp.load('x')\nnp.load('x', allow_pickle=True)\n"
    bad += "import torch\ntorch.load('m')\n"
    assert len(violations(bad)) == 5
    assert violations("import numpy as np\nnp.load('x', allow_pickle=False)\n") == []


def test_no_pickle_in_the_project() -> None:
    files = [p for d in ("service", "model_export", "benchmarks", "tests", "scripts") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    found = [v for p in files if p.name != "test_no_pickle.py" for v in violations(p.read_text(), str(p))]
    assert not found, found
