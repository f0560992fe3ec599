"""The README's settings table says what workers/config.py's SETTINGS say, variable by variable."""

from __future__ import annotations

from pathlib import Path

from deskmail.workers.config import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default_and_meaning():
    rows = {line.split("|")[1].strip(" `"): line.replace("`", "") for line in README.splitlines()
            if line.startswith("| `")}
    for setting in SETTINGS.values():
        default = setting.default or "(unset)"
        assert rows.get(setting.env) == f"| {setting.env} | {default} | {setting.help.replace('`', '')} |", setting.env
