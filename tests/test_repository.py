"""The repository's own text: nothing a merge left half-done."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKERS = ("<<<<<<< ", ">>>>>>> ")


def test_no_file_holds_merge_conflict_markers() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    paths = [REPO / name for name in listed.stdout.splitlines()] if listed.returncode == 0 else \
        [p for p in REPO.rglob("*") if ".git" not in p.parts]
    found = []
    for path in paths:
        if path.suffix in {".png", ".jpg", ".pyc"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if line.startswith(MARKERS) or line == "=======":
                found.append(f"{path.relative_to(REPO)}:{number}: {line[:40]}")
    assert not found, found
