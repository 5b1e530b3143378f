"""The README's commands are the ones CI runs, and its folder map names real folders."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", text)


def test_ci_runs_the_readme_test_command():
    commands = _commands()
    assert len(commands) == 2, "the README must show exactly two set-up commands"
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_folder_map_paths_exist():
    text = (ROOT / "README.md").read_text().split("## Folder map", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `([\w./]+)`", text, flags=re.M)
    assert len(paths) >= 8
    for path in paths:
        assert (ROOT / path).exists(), path
