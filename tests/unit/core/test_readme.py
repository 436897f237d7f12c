"""The README is the user's manual: its quickstart and configuration table must
match what the code does."""

from __future__ import annotations

from pathlib import Path

from touchstream.settings import env_variables

README = Path(__file__).resolve().parents[3] / "README.md"


def test_quickstart_is_the_two_make_commands() -> None:
    text = README.read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = [
        line.split("#")[0].strip() for line in quickstart.splitlines() if line.startswith("make ")
    ]
    assert commands == ["make demo", "make test"]


def test_every_setting_is_documented_with_its_default() -> None:
    text = README.read_text()
    for name, default, _ in env_variables():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} missing from the README configuration table"
        if default:
            assert f"`{default}`" in row, f"{name}: README default differs from {default!r}"
    documented = {
        line.split("`")[1] for line in text.splitlines() if line.startswith("| `TOUCHSTREAM_")
    }
    assert documented == {name for name, _, _ in env_variables()}
