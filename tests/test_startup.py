"""What starting a command loads: the CLI reads its arguments before any heavy library, and
asyncssh's search for liboqs takes the quick way and leaves ``ctypes`` as it found it."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(60)


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_cli_and_the_node_cli_load_no_ssh_numpy_textual_or_pydantic() -> None:
    for module in ("console.cli.main", "nodes.cli"):
        loaded = python(f"import sys, {module}; "
                        "print(sorted(m for m in ('asyncssh', 'numpy', 'textual', 'pydantic') if m in sys.modules))")
        assert loaded == "[]", f"{module} loads {loaded}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the quick look-up is for Linux")
def test_asyncssh_loads_with_the_quick_library_look_up_and_ctypes_is_restored() -> None:
    out = python(
        "import ctypes.util, subprocess\n"
        "original = ctypes.util.find_library\n"
        "ran = []\n"
        "real_popen = subprocess.Popen.__init__\n"
        "def popen(self, args, *a, **k):\n"
        "    ran.append(args[0] if isinstance(args, (list, tuple)) else args)\n"
        "    real_popen(self, args, *a, **k)\n"
        "subprocess.Popen.__init__ = popen\n"
        "import nodes, asyncssh, asyncssh.crypto.pq as pq\n"
        "print(ctypes.util.find_library is original, pq.mlkem_available,"
        " sorted({str(r).rsplit('/', 1)[-1] for r in ran}))\n")
    restored, mlkem, ran = out.split(" ", 2)
    assert restored == "True" and mlkem == "True"
    assert set(ast.literal_eval(ran)) <= {"ldconfig"}  # only the linker cache was asked: no gcc, no ld
