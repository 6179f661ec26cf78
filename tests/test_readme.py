from __future__ import annotations

import re
import subprocess
from pathlib import Path

from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_configuration_reference_documents_every_setting() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"RECO_{name.upper()}" for name in Settings.model_fields if f"`RECO_{name.upper()}`" not in reference]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    assert len(README.splitlines()) <= 150  # reference goes to docs/
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make run" in first_block
    assert "make test" in first_block


def test_make_run_listens_on_loopback_unless_a_host_is_given() -> None:
    """`make run` is dev mode (admin endpoints open without a token): it must not listen on every interface."""
    dry = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--host 127.0.0.1" in dry
    given = subprocess.run(["make", "-n", "run", "HOST=0.0.0.0"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "--host 0.0.0.0" in given
