"""A quick look-up of shared libraries while asyncssh loads, so a process starts in time.

asyncssh looks for liboqs (post-quantum key exchange) with ``ctypes.util.find_library``
when it is imported. On Linux, a library that is not installed sends that function
through ``ldconfig -p``, then ``gcc`` and then ``ld``, twice: 0.1–0.4 s of every
process that speaks SSH — the console, ``run`` and each node. While
``asyncssh.crypto.pq`` executes, and only then, the look-up reads the linker cache
alone (``ldconfig -p``, a few milliseconds). A liboqs the linker cache does not list is
not used; ML-KEM key exchange comes from ``cryptography`` either way.
"""

from __future__ import annotations

import importlib.machinery
import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import importlib.abc

_MODULE = "asyncssh.crypto.pq"


def _from_linker_cache(name: str) -> str | None:
    import ctypes.util

    try:
        return ctypes.util._findSoname_ldconfig(name)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001  (any trouble means: not found)
        return None


class _QuickLookupLoader:  # a loader by its methods: importlib.abc would load importlib.resources
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        import ctypes.util

        original = ctypes.util.find_library
        ctypes.util.find_library = _from_linker_cache
        try:
            self.inner.exec_module(module)
        finally:
            ctypes.util.find_library = original


class _QuickLookupFinder:  # a meta path finder by its method
    def find_spec(self, fullname: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuickLookupLoader(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    """Look libraries up quickly when asyncssh loads (Linux; idempotent; asyncssh not imported)."""
    if not sys.platform.startswith("linux") or _MODULE in sys.modules:
        return
    if not any(isinstance(finder, _QuickLookupFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuickLookupFinder())
