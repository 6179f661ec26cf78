"""One CLI style: every `python -m model_export` command takes `--no-progress` and `--json`, and prints its result
as one JSON line with `--json`, as readable lines without."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export.__main__ import main

COMMANDS = ["", "train", "import", "sample-data", "retrain", "bundles", "publish", "rollback"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_the_output_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"] if command else ["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--json" in text
    assert "--no-progress" in text


def test_json_is_one_line_and_readable_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample-data", "--out", str(tmp_path / "a"), "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    paths = json.loads(out)
    assert set(paths) == {"interactions", "items", "users"}
    assert all(Path(p).is_file() for p in paths.values())

    assert main(["sample-data", "--out", str(tmp_path / "b")]) == 0
    readable = capsys.readouterr().out
    assert "train on it: python -m model_export train" in readable
    with pytest.raises(json.JSONDecodeError):
        json.loads(readable)
