"""The README's quickstart runs verbatim; its two commands are what CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _block(marker: str, lang: str) -> str:
    after = README.split(f"<!-- {marker} -->", 1)[1]
    match = re.search(rf"```{lang}\n(.*?)```", after, re.S)
    assert match, marker
    return match.group(1)


def test_quickstart_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _block("quickstart:start", "python")
    namespace: dict = {"__name__": "readme_quickstart"}
    exec(compile(code, "README.md:quickstart", "exec"), namespace)
    with namespace["app"].app_context():
        namespace["db"].session.remove()
        namespace["db"].engine.dispose()


def test_commands_are_present():
    assert "pytest" in _block("test-command", "sh")
    assert "example_shop" in _block("demo-command", "sh")
