"""Expected results, computed here from scratch with plain numpy, item by item.

Generated inputs are re-derived from ``default_rng([seed, i])`` exactly as docs/task-files.md
specifies, independently of ``protocol.inputs``, so a bug there is caught too.
"""

from __future__ import annotations

import numpy as np


def generated_item(spec: dict, i: int) -> np.ndarray:
    rng = np.random.default_rng([spec["seed"], i])
    shape = tuple(spec["shape"])
    match spec.get("distribution", "normal"):
        case "normal":
            item = rng.standard_normal(shape)
        case "uniform":
            item = rng.uniform(-1.0, 1.0, shape)
        case "symmetric":
            m = rng.standard_normal(shape)
            item = (m + m.T) / 2
        case "spd":
            m = rng.standard_normal(shape)
            item = m @ m.T + shape[0] * np.eye(shape[0])
    return item.astype(spec.get("dtype", "float64"))


OPERATIONS = {
    "invert": lambda x: np.linalg.inv(x["a"]),
    "det": lambda x: np.linalg.det(x["a"]),
    "solve": lambda x: np.linalg.solve(x["a"], x["b"]),
    "matmul": lambda x: x["a"] @ x["b"],
    "eigvalsh": lambda x: np.linalg.eigvalsh(x["a"]),
    "svdvals": lambda x: np.linalg.svd(x["a"], compute_uv=False),
    # the example package's operations (docs/examples/example-operations)
    "cholesky": lambda x: np.linalg.cholesky(x["a"]),
    "logdet": lambda x: np.array(np.linalg.slogdet(x["a"])),
}


def expected_item(document: dict, i: int) -> np.ndarray:
    """Item ``i`` of a task document whose inputs are all ``generate``."""
    inputs = {name: generated_item(spec["generate"], i) for name, spec in document["inputs"].items()}
    return OPERATIONS[document["operation"]](inputs)


def check_npz(path, document: dict, *, rtol: float = 1e-6) -> int:
    """Assert every item of the ``.npz`` at ``path`` is right; return the item count."""
    with np.load(path) as data:
        ok = data["ok"]
        count = len(ok)
        assert ok.all(), f"{np.count_nonzero(~ok)} items not ok"
        values = data["result"] if "result" in data else data["norms"]
        for i in range(count):
            want = expected_item(document, i)
            if "norms" in data:
                want = np.linalg.norm(want)
            np.testing.assert_allclose(values[i], want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max())),
                                       err_msg=f"item {i}")
    return count
