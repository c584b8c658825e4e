"""Generated items follow docs/task-files.md to the bit; array inputs load safely or say why not."""

from __future__ import annotations

import itertools
import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import TaskFileError
from protocol.inputs import (
    DISTRIBUTIONS,
    GeneratedInput,
    float_array,
    format_bytes,
    inline_array,
    load_array_file,
)


def interface_item(seed: int, i: int, shape: tuple[int, ...], distribution: str, dtype: str) -> np.ndarray:
    """Item ``i`` exactly as docs/task-files.md words it, written independently of protocol.inputs."""
    rng = np.random.default_rng([seed, i])
    if distribution == "normal":
        item = rng.standard_normal(shape)
    elif distribution == "uniform":
        item = rng.uniform(-1.0, 1.0, shape)
    elif distribution == "symmetric":
        m = rng.standard_normal(shape)
        item = (m + m.T) / 2
    else:
        n = shape[0]
        m = rng.standard_normal((n, n))
        item = m @ m.T + n * np.eye(n)
    return item.astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_items_are_the_interface_draws_bit_for_bit(distribution: str, dtype: str) -> None:
    shape = (6, 6)
    generated = GeneratedInput(count=30, shape=shape, seed=12345, distribution=distribution, dtype=dtype)
    items = generated.items(3, 30)
    assert items.dtype == np.dtype(dtype)
    assert items.shape == (27, *shape)
    for row, i in enumerate(range(3, 30)):
        np.testing.assert_array_equal(items[row], interface_item(12345, i, shape, distribution, dtype))


def test_float32_items_are_float64_draws_cast_after_drawing() -> None:
    as64 = GeneratedInput(10, (5, 5), 3, "spd", "float64").items(0, 10)
    as32 = GeneratedInput(10, (5, 5), 3, "spd", "float32").items(0, 10)
    np.testing.assert_array_equal(as32, as64.astype(np.float32))


def test_an_item_does_not_depend_on_the_chunk_it_is_drawn_in() -> None:
    generated = GeneratedInput(count=10, shape=(4, 3), seed=9, distribution="uniform")
    np.testing.assert_array_equal(generated.items(0, 10)[7], generated.items(7, 8)[0])


@settings(max_examples=40, deadline=None)
@given(
    distribution=st.sampled_from(DISTRIBUTIONS),
    count=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    seed=st.integers(0, 2**64 - 1),
)
def test_any_chunking_gives_the_same_items(distribution: str, count: int, cuts: list[int], seed: int) -> None:
    generated = GeneratedInput(count=count, shape=(3, 3), seed=seed, distribution=distribution)
    bounds = sorted({0, count, *(cut for cut in cuts if cut <= count)})
    pieces = [generated.items(start, stop) for start, stop in itertools.pairwise(bounds)]
    np.testing.assert_array_equal(np.concatenate(pieces), generated.items(0, count))


def test_seed_and_index_both_change_the_items() -> None:
    first = GeneratedInput(3, (4,), 1, "normal").items(0, 3)
    other_seed = GeneratedInput(3, (4,), 2, "normal").items(0, 3)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first, other_seed)


def test_symmetric_and_spd_items_are_what_they_say() -> None:
    symmetric = GeneratedInput(20, (7, 7), 4, "symmetric").items(0, 20)
    np.testing.assert_array_equal(symmetric, np.swapaxes(symmetric, 1, 2))
    spd = GeneratedInput(20, (7, 7), 4, "spd").items(0, 20)
    assert (np.linalg.eigvalsh(spd) > 0).all()
    uniform = GeneratedInput(20, (7, 7), 4, "uniform").items(0, 20)
    assert uniform.min() >= -1.0 and uniform.max() < 1.0


def test_empty_and_out_of_range_item_ranges() -> None:
    generated = GeneratedInput(5, (2, 2), 0, "normal")
    assert generated.items(5, 5).shape == (0, 2, 2)
    for start, stop in [(-1, 2), (3, 2), (0, 6)]:
        with pytest.raises(ValueError, match="outside"):
            generated.items(start, stop)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(0, 10**9),
    shape=st.lists(st.integers(1, 10**4), min_size=1, max_size=3),
    seed=st.integers(0, 2**64 - 1),
    distribution=st.sampled_from(["normal", "uniform"]),
    dtype=st.sampled_from(["float64", "float32"]),
)
def test_spec_round_trips_through_json(
    count: int, shape: list[int], seed: int, distribution: str, dtype: str
) -> None:
    generated = GeneratedInput(count, tuple(shape), seed, distribution, dtype)
    spec = json.loads(json.dumps(generated.to_spec()))
    assert spec == {
        "count": count,
        "shape": shape,
        "seed": seed,
        "distribution": distribution,
        "dtype": dtype,
    }
    assert GeneratedInput.from_spec(spec) == generated


def test_from_spec_defaults_like_a_task_file_and_normalises_shape() -> None:
    generated = GeneratedInput.from_spec({"count": 2, "shape": [3, 3], "seed": 1})
    assert (generated.distribution, generated.dtype, generated.shape) == ("normal", "float64", (3, 3))


@pytest.mark.parametrize(
    "spec, error",
    [
        ({"count": True, "shape": [2], "seed": 1, "distribution": "normal"}, TypeError),
        ({"count": 2, "shape": [2], "seed": -1, "distribution": "normal"}, ValueError),
        ({"count": 2, "shape": [2], "seed": 2**64, "distribution": "normal"}, ValueError),
        ({"count": -1, "shape": [2], "seed": 1, "distribution": "normal"}, ValueError),
        ({"count": 2, "shape": [0], "seed": 1, "distribution": "normal"}, ValueError),
        ({"count": 2, "shape": "2", "seed": 1, "distribution": "normal"}, TypeError),
        ({"count": 2, "shape": [2], "seed": 1, "distribution": "gaussian"}, ValueError),
        ({"count": 2, "shape": [2], "seed": 1, "distribution": "normal", "dtype": "int8"}, ValueError),
        ({"count": 2, "shape": [2, 3], "seed": 1, "distribution": "spd"}, ValueError),
        ({"count": 2, "shape": [2], "distribution": "normal"}, ValueError),
        ({"count": 2, "shape": [2], "seed": 1, "distribution": "normal", "extra": 0}, ValueError),
    ],
)
def test_from_spec_refuses_what_is_not_a_valid_spec(spec: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        GeneratedInput.from_spec(spec)


# ---------------------------------------------------------------- array inputs


def test_float_array_keeps_float32_widens_the_rest_and_freezes() -> None:
    assert float_array(np.ones((2, 3), np.float32), "x").dtype == np.float32
    for dtype in (np.int64, np.uint8, np.float16, ">f8"):
        converted = float_array(np.ones((2, 3), dtype), "x")
        assert converted.dtype == np.float64 and converted.dtype.isnative
    converted = float_array(np.arange(6.0).reshape(2, 3)[:, ::2], "x")
    assert converted.flags.c_contiguous and not converted.flags.writeable


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.array([[1 + 2j]]), "real numbers"),
        (np.array([[True]]), "real numbers"),
        (np.array([["1"]]), "real numbers"),
        (np.array(3.0), "first axis is the items"),
        (np.ones((2, 0, 3)), "must not be empty"),
    ],
)
def test_float_array_refuses(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        float_array(array, "inputs.a")
    [problem] = caught.value.problems
    assert problem.startswith("inputs.a: ") and fragment in problem


def test_inline_numbers_become_float64() -> None:
    array = inline_array([[[1, 2], [3, 4.5]]], "inputs.a.inline")
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, [[[1.0, 2.0], [3.0, 4.5]]])


@pytest.mark.parametrize(
    "values, path, fragment",
    [
        ([[1, 2], [3]], "inputs.a.inline: ", "ragged"),
        ([[1, "2"]], "inputs.a.inline[0][1]: ", "must be a number"),
        ([[1, True]], "inputs.a.inline[0][1]: ", "must be a number"),
        ([[1, None]], "inputs.a.inline[0][1]: ", "must be a number"),
        ([[1, {"x": 1}]], "inputs.a.inline[0][1]: ", "must be a number, got an object"),
        ([[10**400]], "inputs.a.inline: ", "too large"),
        ([[[[[[[[[[[1]]]]]]]]]]], "inputs.a.inline[0][0][0][0][0][0][0][0][0]: ", "deep"),
    ],
)
def test_inline_refuses(values: list, path: str, fragment: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        inline_array(values, "inputs.a.inline")
    [problem] = caught.value.problems
    assert problem.startswith(path) and fragment in problem


def test_npy_and_npz_files_load(tmp_path) -> None:
    matrices = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    np.save(tmp_path / "m.npy", matrices)
    np.savez(tmp_path / "both.npz", a=matrices, b=matrices.astype(np.float32))
    loaded = load_array_file("m.npy", None, base_dir=tmp_path, where="inputs.a", max_bytes=10**6)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, matrices)
    from_npz = load_array_file("both.npz", "b", base_dir=tmp_path, where="inputs.a", max_bytes=10**6)
    assert from_npz.dtype == np.float32


def _one_problem(tmp_path, file: str, key: str | None = None, max_bytes: int = 10**6) -> str:
    with pytest.raises(TaskFileError) as caught:
        load_array_file(file, key, base_dir=tmp_path, where="inputs.a", max_bytes=max_bytes)
    [problem] = caught.value.problems
    return problem


def test_file_problems_name_the_field(tmp_path) -> None:
    np.savez(tmp_path / "two.npz", x=np.ones((1, 2, 2)), y=np.ones((1, 2, 2)))
    np.save(tmp_path / "objects.npy", np.array([[None, 1]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "big.npy", np.ones((100, 10, 10)))
    (tmp_path / "text.npy").write_text("not an array")
    (tmp_path / "text.npz").write_text("not an archive")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass

    assert _one_problem(tmp_path, "nope.npy").startswith('inputs.a.file: no such file "')
    assert _one_problem(tmp_path, "data.csv").startswith("inputs.a.file: must name a .npy or .npz file")
    assert _one_problem(tmp_path, "two.npz") == 'inputs.a.key: required for a .npz file; it holds "x", "y"'
    assert (
        _one_problem(tmp_path, "two.npz", "z") == 'inputs.a.key: "z" is not in "two.npz"; it holds "x", "y"'
    )
    assert "it holds no arrays" in _one_problem(tmp_path, "empty.npz", "x")
    assert _one_problem(tmp_path, "big.npy", "x").startswith("inputs.a.key: only a .npz file")
    assert "real numbers, got an array of object" in _one_problem(tmp_path, "objects.npy")
    assert "not a valid NumPy .npy file" in _one_problem(tmp_path, "text.npy")
    assert "not a valid NumPy .npz file" in _one_problem(tmp_path, "text.npz", "x")
    assert "--max-task-bytes" in _one_problem(tmp_path, "big.npy", max_bytes=1000)
    (tmp_path / "folder.npy").mkdir()
    assert "cannot read" in _one_problem(tmp_path, "folder.npy")


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (512, 2048, 5 * 1024**3, 3 * 1024**4)] == [
        "512 bytes",
        "2.0 KiB",
        "5.0 GiB",
        "3.0 TiB",
    ]
