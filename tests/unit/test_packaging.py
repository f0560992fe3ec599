"""The wheel installs one import name, `deskmail`, holding every file of the three project folders."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("workers", "producers", "schemas")


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    [built] = folder.glob("deskmail-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_installs_only_the_deskmail_name(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.namelist() if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"deskmail"}


def test_every_file_of_the_three_folders_is_in_the_wheel_under_deskmail(wheel: zipfile.ZipFile) -> None:
    inside = set(wheel.namelist())
    missing = [path for path in tracked(*FOLDERS) if f"deskmail/{path}" not in inside]
    assert missing == []


def test_the_command_points_into_the_namespace(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    assert "deskmail = deskmail.producers.cli:main" in wheel.read(entry_points).decode()


def test_no_module_imports_a_folder_by_its_bare_name() -> None:
    """A bare `import workers` would load a second copy of a module, or another project's `workers`."""
    offenders = []
    for path in tracked("*.py"):
        for node in ast.walk(ast.parse((ROOT / path).read_text("utf-8"), path)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno}: {name}" for name in names if name.split(".")[0] in FOLDERS]
    assert offenders == []
