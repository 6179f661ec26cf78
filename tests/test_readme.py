from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    missing = [f"RECO_{name.upper()}" for name in Settings.model_fields if f"`RECO_{name.upper()}`" not in README]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make run" in first_block
    assert "make test" in first_block
