"""The service's layout holds: imports go one way (api -> serving -> experiments -> items -> recommend -> store -> core,
never back), no package holds more than 12 modules and no module more than 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"
# Top to bottom: a package may import itself and the packages below it.
LAYERS = ["api", "serving", "experiments", "items", "recommend", "store", "core"]


def service_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a `service.*` module in `path`, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "service" else [f"service.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("service.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("service.")]
    return found


def package_of(module: str) -> str:
    return module.split(".")[1]


def modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "migrations" not in p.parts)


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SERVICE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SERVICE)))
def test_imports_go_down_only(path: Path) -> None:
    relative = path.relative_to(SERVICE)
    if len(relative.parts) == 1:  # service/__init__.py, service/__main__.py: the entry point may import anything
        return
    rank = LAYERS.index(relative.parts[0])
    wrong = [
        f"{relative}:{line} imports {module}"
        for line, module in service_imports(path)
        if LAYERS.index(package_of(module)) < rank
    ]
    assert not wrong, f"imports that go up ({' -> '.join(LAYERS)}): {wrong}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from service.api.app import create_app\n\nfrom service import serving\n")
    assert sorted(service_imports(module)) == [(2, "service.api.app"), (4, "service.serving")]


def test_packages_and_modules_stay_small() -> None:
    for package in LAYERS:
        count = len([p for p in (SERVICE / package).glob("*.py") if p.name != "__init__.py"])
        assert count <= 12, f"service/{package} holds {count} modules (at most 12)"
    long = {str(p.relative_to(SERVICE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


def test_each_package_says_what_it_may_import() -> None:
    for package in LAYERS:
        doc = ast.get_docstring(ast.parse((SERVICE / package / "__init__.py").read_text()))
        assert doc, f"service/{package}/__init__.py: say what lives there and what it may import"
        assert "may import" in doc.lower(), f"service/{package}/__init__.py: say what it may import"
