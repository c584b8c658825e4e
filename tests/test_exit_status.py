"""The exit statuses are the documented contract, and every face uses the one table."""

from __future__ import annotations

import re
from pathlib import Path

from protocol.errors import ExitStatus

REPO = Path(__file__).resolve().parent.parent
FACES = ["console/cli", "console/tui", "console/ssh/user_commands.py", "nodes/cli.py"]


def test_exit_statuses_are_the_contract() -> None:
    assert {s.name: int(s) for s in ExitStatus} == {
        "OK": 0, "FAILED": 1, "USAGE": 2, "CONNECT": 3, "INTERNAL": 70, "INTERRUPTED": 130,
    }


def test_no_face_defines_its_own_exit_statuses() -> None:
    files = [p for face in FACES for p in ((REPO / face).rglob("*.py") if (REPO / face).is_dir() else [REPO / face])]
    assert files
    for path in files:
        text = path.read_text()
        assert not re.search(r"^EXIT_\w+\s*[,=]", text, flags=re.M), f"{path}: exit statuses defined again"
        assert not re.search(r"^\s*return [0-9]+$|\bexit\((return_code=)?[0-9]+\)", text, flags=re.M), f"{path}: a bare exit status"
