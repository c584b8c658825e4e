"""Task files: valid ones load, broken ones are refused with the field named, the schema holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.cli.validate import run_validate
from nodes.kernels import compute
from protocol.errors import TaskFileError
from protocol.inputs import GeneratedInput
from protocol.operations import OPERATIONS
from protocol.taskfile import (
    NO_LIMITS,
    TaskLimits,
    load_task_file,
    parse_task,
    parse_task_text,
    task_from_parts,
    task_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_tasks"
BROKEN = Path(__file__).resolve().parent / "task_files"
SCHEMA_FILE = ROOT / "docs" / "task-file.schema.json"
TASK_DOC = ROOT / "docs" / "task-files.md"


def generate(count: int = 10, shape: list[int] | None = None, distribution: str = "normal", **extra) -> dict:
    return {
        "generate": {
            "count": count,
            "shape": shape or [4, 4],
            "seed": 1,
            "distribution": distribution,
            **extra,
        }
    }


def problems_of(document: object, **options) -> list[str]:
    with pytest.raises(TaskFileError) as caught:
        parse_task(document, **options)
    return caught.value.problems


# ---------------------------------------------------------------- sample tasks


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_sample_task_validates(path: Path, capsys) -> None:
    assert run_validate(str(path)) == 0
    out, err = capsys.readouterr()
    task = load_task_file(path)
    assert out.startswith(f"ok: {task.name} — {task.operation}, {task.count} items")
    assert err == ""


def test_the_samples_cover_every_operation_and_input_kind() -> None:
    tasks = [load_task_file(path) for path in SAMPLES.glob("*.json")]
    assert {task.operation for task in tasks} == set(OPERATIONS.builtin_names())
    descriptions = [d for task in tasks for d in task.describe_inputs().values()]
    assert any("generate" in d for d in descriptions) and any("array" in d for d in descriptions)


def test_the_readme_sample_and_the_large_one_are_what_they_promise() -> None:
    small = load_task_file(SAMPLES / "invert-small.json")
    assert (small.operation, small.count, small.item_shape("a")) == ("invert", 200, (64, 64))
    large = load_task_file(SAMPLES / "invert-large.json")
    assert (large.count, large.item_shape("a"), large.chunk_size, large.return_mode) == (
        5000,
        (256, 256),
        None,
        "full",
    )
    assert large.inputs["a"].distribution == "normal"


def test_solve_file_reads_its_npy_next_to_the_task_file() -> None:
    task = load_task_file(SAMPLES / "solve-file.json")
    expected = np.load(SAMPLES / "solve-file-b.npy")
    np.testing.assert_array_equal(task.input_items("b", 10, 20), expected[10:20])
    assert (SAMPLES / "solve-file-b.npy").stat().st_size < 100_000


# ---------------------------------------------------------------- broken task files

# file, the start of the expected problem line (the field path), a fragment of its message
BROKEN_FILES = [
    ("invalid-json.json", "invalid JSON at line 5, column 3", "Expecting property name"),
    ("not-an-object.json", "the task must be a JSON object", "got a list"),
    ("unknown-operation.json", "operation: ", 'did you mean "invert"'),
    ("missing-input.json", "inputs.b: ", 'required input is missing; solve takes "a" and "b"'),
    ("extra-input.json", "inputs.b: ", 'unknown input; invert takes "a"'),
    ("nonsquare-invert.json", "inputs.a.generate.shape: ", "invert needs square matrices, got [3, 4]"),
    ("mismatched-counts.json", "inputs.b.generate.count: ", "a has 10 items, b has 12"),
    ("matmul-inner.json", "inputs.b.generate.shape: ", "match the 4 columns of a, got [5, 2]"),
    ("solve-inner.json", "inputs.b.generate.shape: ", "vector of length 4 or a matrix with 4 rows"),
    ("negative-count.json", "inputs.a.generate.count: ", "must be at least 1, got -5"),
    (
        "absurd-count.json",
        "inputs.a.generate.count: ",
        "over the limit of 10000000 items per task; raise it with --max-items",
    ),
    ("unknown-distribution.json", "inputs.a.generate.distribution: ", 'got "gaussian"'),
    ("missing-file.json", "inputs.a.file: ", "no such file"),
    ("bad-chunk-size.json", "chunk_size: ", 'must be a positive integer or "auto", got "10"'),
    ("null-chunk-size.json", "chunk_size: ", "got null"),
    ("bad-return.json", "return: ", 'must be one of "full", "norms", got "everything"'),
    ("misspelt-field.json", "opration: ", 'unknown field (did you mean "operation"?)'),
    ("misspelt-generate-field.json", "inputs.a.generate.cout: ", 'unknown field (did you mean "count"?)'),
    ("string-count.json", "inputs.a.generate.count: ", 'must be an integer, got "10"'),
    ("zero-shape.json", "inputs.a.generate.shape[0]: ", "must be at least 1, got 0"),
    ("bad-dtype.json", "inputs.a.generate.dtype: ", 'got "float16"'),
    (
        "spd-nonsquare.json",
        "inputs.a.generate.distribution: ",
        '"spd" needs a square shape [n, n], got [3, 4]',
    ),
    ("eigvalsh-not-symmetric.json", "inputs.a.generate.distribution: ", "eigvalsh needs symmetric matrices"),
    ("eigvalsh-inline-asymmetric.json", "inputs.a.inline: ", "item 1 is not symmetric"),
    ("two-sources.json", "inputs.a: ", 'needs exactly one of "generate", "file" or "inline"'),
    ("inline-ragged.json", "inputs.a.inline: ", "ragged"),
    ("inline-text.json", "inputs.a.inline[0][1][0]: ", 'must be a number, got "3"'),
    ("npz-key-on-npy.json", "inputs.a.key: ", "only a .npz file holds named arrays"),
    ("huge-chunk.json", "chunk_size: ", "over the limit of 256.0 MiB per chunk"),
    ("zero-attempts.json", "max_attempts: ", "must be at least 1, got 0"),
]


@pytest.mark.parametrize("name, start, fragment", BROKEN_FILES, ids=[row[0] for row in BROKEN_FILES])
def test_each_broken_file_is_refused_naming_the_field(name: str, start: str, fragment: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        load_task_file(BROKEN / name)
    problems = caught.value.problems
    assert any(p.startswith(start) and fragment in p for p in problems), problems


def test_every_broken_file_is_in_the_table() -> None:
    assert sorted(p.name for p in BROKEN.glob("*.json")) == sorted(row[0] for row in BROKEN_FILES)


def test_validate_prints_problems_prefixed_with_the_file_and_returns_2(capsys) -> None:
    path = str(BROKEN / "nonsquare-invert.json")
    assert run_validate(path) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: inputs.a.generate.shape: invert needs square matrices, got [3, 4]\n"


@pytest.mark.parametrize("name", ["does-not-exist.json", "."])
def test_validate_of_a_missing_file_or_a_folder_is_one_line_not_a_traceback(
    name: str, tmp_path, capsys
) -> None:
    path = str(tmp_path / name)
    assert run_validate(path) == 2
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith(f"{path}: ")
    assert "Traceback" not in err


def test_validate_takes_raised_limits(capsys) -> None:
    path = str(BROKEN / "absurd-count.json")
    assert run_validate(path, limits=TaskLimits(max_items=10**13, max_task_bytes=10**17)) == 0


def test_problems_are_all_reported_at_once() -> None:
    problems = problems_of(
        {"operation": "invert", "inputs": {"a": generate(count=0)}, "chunk_size": -1, "max_attempts": 101}
    )
    assert [p.split(":")[0] for p in problems] == ["inputs.a.generate.count", "chunk_size", "max_attempts"]


# ---------------------------------------------------------------- meaning


def test_defaults_of_the_optional_fields() -> None:
    spec = {"count": 2, "shape": [3, 3], "seed": 5}
    task = parse_task({"operation": "invert", "inputs": {"a": {"generate": spec}}})
    assert (task.name, task.chunk_size, task.return_mode, task.max_attempts) == ("task", None, "full", 3)
    assert task.describe_inputs()["a"]["generate"] == {**spec, "distribution": "normal", "dtype": "float64"}


def test_names_default_to_the_file_stem_or_task(tmp_path) -> None:
    document = {"operation": "det", "inputs": {"a": generate()}}
    (tmp_path / "my det.json").write_text(json.dumps(document))
    assert load_task_file(tmp_path / "my det.json").name == "my det"
    assert parse_task(document).name == "task"
    assert parse_task({**document, "name": "chosen"}).name == "chosen"
    assert problems_of({**document, "name": "x" * 65}) == ["name: must be at most 64 characters long"]
    assert problems_of({**document, "name": "a\nb"}) == ["name: must not contain control characters"]


def test_file_inputs_are_refused_over_ssh(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.ones((2, 3, 3)))
    document = {"operation": "invert", "inputs": {"a": {"file": "a.npy"}}}
    assert parse_task(document, base_dir=tmp_path).count == 2
    assert problems_of(document, base_dir=tmp_path, allow_files=False) == [
        "inputs.a.file: file inputs are not accepted over SSH; use generate or inline, or chainconsole submit"
    ]


def test_npz_inputs_and_mixed_sources(tmp_path) -> None:
    np.savez(tmp_path / "in.npz", b=np.arange(12, dtype=np.int16).reshape(3, 4))
    document = {
        "operation": "solve",
        "inputs": {"a": generate(3, [4, 4], "spd"), "b": {"file": "in.npz", "key": "b"}},
    }
    task = parse_task(document, base_dir=tmp_path)
    assert task.input_dtype("b") == np.float64
    assert task.describe_inputs()["b"] == {"array": {"dtype": "float64", "shape": [3, 4]}}
    assert task.result_item_shape == (4,)


def test_limits_are_raised_on_purpose() -> None:
    document = {"operation": "det", "inputs": {"a": generate(count=101, shape=[30, 30])}}
    small = TaskLimits(max_items=100, max_item_elements=800, max_task_bytes=1000)
    problems = problems_of(document, limits=small)
    assert [p.split(":")[0] for p in problems] == ["inputs.a.generate.count", "inputs.a.generate.shape"]
    assert "--max-items" in problems[0] and "--max-item-elements" in problems[1]
    problems = problems_of(document, limits=TaskLimits(max_task_bytes=1000))
    assert problems[0].startswith("inputs: the inputs and results take") and "--max-task-bytes" in problems[0]
    assert parse_task(document, limits=TaskLimits(max_items=101)).count == 101


def test_norms_tasks_count_one_float64_per_result_item() -> None:
    document = {"operation": "invert", "inputs": {"a": generate(count=1000, shape=[32, 32])}}
    limit = TaskLimits(max_task_bytes=1000 * (32 * 32 * 8 + 8))
    assert problems_of(document, limits=limit)  # full results do not fit
    assert parse_task({**document, "return": "norms"}, limits=limit).item_nbytes == 32 * 32 * 8 + 8


def test_eigvalsh_accepts_symmetric_arrays_up_to_rounding() -> None:
    m = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    nearly = m @ np.swapaxes(m, 1, 2)  # float32 BLAS: symmetric up to rounding
    task = parse_task({"operation": "eigvalsh", "inputs": {"a": {"inline": nearly.tolist()}}})
    assert task.count == 3


def test_the_task_api_on_a_generated_and_an_array_input() -> None:
    b = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    task = parse_task(
        {
            "name": "demo",
            "operation": "solve",
            "inputs": {"a": generate(3, [2, 2], "spd", dtype="float32"), "b": {"inline": b}},
            "chunk_size": 2,
            "return": "norms",
            "max_attempts": 5,
        }
    )
    assert (task.name, task.operation, task.count, task.chunk_size, task.return_mode, task.max_attempts) == (
        "demo",
        "solve",
        3,
        2,
        "norms",
        5,
    )
    assert task.item_shape("a") == (2, 2) and task.item_shape("b") == (2,)
    assert task.input_dtype("a") == np.float32 and task.input_dtype("b") == np.float64
    assert task.result_dtype == np.float64  # float32 only when every input is
    expected_a = GeneratedInput(3, (2, 2), 1, "spd", "float32").items(1, 3)
    np.testing.assert_array_equal(task.input_items("a", 1, 3), expected_a)
    np.testing.assert_array_equal(task.input_items("b", 1, 3), b[1:3])
    assert not task.input_items("b", 0, 3).flags.writeable
    with pytest.raises(ValueError):
        task.input_items("a", 2, 4)


def test_an_all_float32_task_has_float32_results() -> None:
    task = parse_task(
        {
            "operation": "matmul",
            "inputs": {"a": generate(2, [2, 3], dtype="float32"), "b": generate(2, [3, 1], dtype="float32")},
        }
    )
    assert task.result_dtype == np.float32 and task.result_item_shape == (2, 1)


# ---------------------------------------------------------------- JSON text


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"operation": "det",\n "inputs": {}]', "invalid JSON at line 2, column 14"),
        ('{"operation": NaN}', "invalid JSON: NaN is not a JSON number"),
        (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
        ("", "invalid JSON at line 1, column 1"),
    ],
)
def test_text_that_is_not_json_is_one_clear_problem(text: str | bytes, problem: str) -> None:
    with pytest.raises(TaskFileError) as caught:
        parse_task_text(text)
    [line] = caught.value.problems
    assert line.startswith(problem)


def test_json_text_with_a_byte_order_mark_and_as_bytes() -> None:
    text = json.dumps({"operation": "det", "inputs": {"a": generate()}})
    assert parse_task_text(("\ufeff" + text).encode()).count == 10
    assert parse_task_text(text, default_name="from-ssh").name == "from-ssh"


# ---------------------------------------------------------------- rebuilding from parts


def test_a_task_rebuilds_from_its_described_parts() -> None:
    task = load_task_file(SAMPLES / "solve-file.json")
    described = task.describe_inputs()
    generated = {name: d["generate"] for name, d in described.items() if "generate" in d}
    arrays = {name: task.inputs[name] for name, d in described.items() if "array" in d}
    rebuilt = task_from_parts(
        task.name, task.operation, generated, arrays, task.chunk_size, task.return_mode, task.max_attempts
    )
    assert rebuilt.describe_inputs() == described
    for name in task.inputs:
        np.testing.assert_array_equal(rebuilt.input_items(name, 5, 9), task.input_items(name, 5, 9))


def test_parts_are_validated_like_a_task_file() -> None:
    spec = {"count": 3, "shape": [2, 2], "seed": 1, "distribution": "normal", "dtype": "float64"}
    with pytest.raises(TaskFileError) as caught:
        task_from_parts(
            "t", "solve", {"a": spec}, {"a": np.ones((3, 2)), "b": np.ones((4, 2))}, None, "full", 3
        )
    assert caught.value.problems == [
        "inputs.a: given both as a generated input and as an array",
        "inputs.b: every input needs the same count; a has 3 items, b has 4",
    ]
    with pytest.raises(TaskFileError):
        task_from_parts("t", "invert", "not a mapping", {}, None, "full", 3)  # type: ignore[arg-type]


def test_parts_from_the_journal_skip_the_limits() -> None:
    spec = {"count": 200, "shape": [2, 2], "seed": 1, "distribution": "normal"}
    with pytest.raises(TaskFileError):
        task_from_parts("t", "invert", {"a": spec}, {}, None, "full", 3, limits=TaskLimits(max_items=100))
    assert task_from_parts("t", "invert", {"a": spec}, {}, None, "full", 3, limits=NO_LIMITS).count == 200


# ---------------------------------------------------------------- properties


@st.composite
def valid_tasks(draw: st.DrawFn) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A valid task document with small generated inputs, and its item shapes."""
    operation = draw(st.sampled_from(sorted(OPERATIONS.builtin_names())))
    n, m, k = (draw(st.integers(1, 5)) for _ in range(3))
    shapes = {
        "invert": {"a": (n, n)},
        "det": {"a": (n, n)},
        "solve": {"a": (n, n), "b": draw(st.sampled_from([(n,), (n, k)]))},
        "matmul": {"a": (n, m), "b": (m, k)},
        "eigvalsh": {"a": (n, n)},
        "svdvals": {"a": (n, m)},
    }[operation]
    count = draw(st.integers(1, 20))
    dtype = draw(st.sampled_from(["float64", "float32"]))

    def distribution(name: str, shape: tuple[int, ...]) -> str:
        if operation == "eigvalsh" or (operation == "solve" and name == "a"):
            return draw(st.sampled_from(["symmetric", "spd"]) if operation == "eigvalsh" else st.just("spd"))
        return draw(st.sampled_from(["normal", "uniform"]))

    document = {
        "operation": operation,
        "inputs": {
            name: {
                "generate": {
                    "count": count,
                    "shape": list(shape),
                    "seed": draw(st.integers(0, 2**64 - 1)),
                    "distribution": distribution(name, shape),
                    "dtype": dtype,
                }
            }
            for name, shape in shapes.items()
        },
        "chunk_size": draw(st.one_of(st.just("auto"), st.integers(1, 50))),
        "return": draw(st.sampled_from(["full", "norms"])),
        "max_attempts": draw(st.integers(1, 100)),
    }
    return document, shapes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tasks())
def test_valid_tasks_parse_and_their_result_shape_is_numpys(case: tuple[dict, dict]) -> None:
    document, shapes = case
    task = parse_task(json.loads(json.dumps(document)))
    assert task.count == document["inputs"]["a"]["generate"]["count"]
    assert {name: task.item_shape(name) for name in task.inputs} == shapes
    assert task.chunk_size == (None if document["chunk_size"] == "auto" else document["chunk_size"])
    assert task.return_mode == document["return"] and task.max_attempts == document["max_attempts"]
    # The result shape the front-end allocates is the shape numpy computes.
    out = compute(task.operation, {name: task.input_items(name, 0, 1) for name in task.inputs}, "full")
    assert out.result.shape[1:] == task.result_item_shape
    assert out.result.dtype == task.result_dtype
    rebuilt = task_from_parts(
        task.name,
        task.operation,
        {name: d["generate"] for name, d in task.describe_inputs().items()},
        {},
        task.chunk_size,
        task.return_mode,
        task.max_attempts,
    )
    assert rebuilt.describe_inputs() == task.describe_inputs()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(
    [
        "name",
        "operation",
        "inputs",
        "chunk_size",
        "return",
        "max_attempts",
        "a",
        "b",
        "generate",
        "inline",
        "file",
    ]
)
documents = st.dictionaries(fields, json_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.one_of(json_values, documents))
def test_any_json_is_a_task_or_a_task_file_error(document: object) -> None:
    try:
        task = parse_task(document, allow_files=False)
    except TaskFileError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
    else:
        assert task.operation in OPERATIONS


# ---------------------------------------------------------------- schema and docs


def test_the_schema_file_matches_the_code() -> None:
    expected = json.dumps(task_json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, (
        'docs/task-file.schema.json is out of date; regenerate it with: python -c "import json; '
        "from protocol.taskfile import task_json_schema as s; "
        "open('docs/task-file.schema.json', 'w').write(json.dumps(s(), indent=2, sort_keys=True) + '\\n')\""
    )


def test_the_schema_lists_the_whitelist_and_forbids_unknown_fields() -> None:
    schema = task_json_schema()
    assert schema["properties"]["operation"]["enum"] == list(OPERATIONS.builtin_names())
    assert schema["additionalProperties"] is False
    assert all(definition["additionalProperties"] is False for definition in schema["$defs"].values())
    assert set(schema["required"]) == {"operation", "inputs"}


def test_every_json_example_in_the_task_file_reference_is_a_valid_task() -> None:
    blocks = re.findall(r"```json\n(.*?)```", TASK_DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6
    for block in blocks:
        parse_task_text(block, base_dir=SAMPLES)


@pytest.mark.parametrize("text, problem", [
    ('{"operation": "det", "operation": "invert"}', 'repeats the key "operation"'),
    ('{"name": 1e400}', "out of range"),
    ('{"name": NaN}', "NaN is not a JSON number"),
    ('{"name": -Infinity}', "-Infinity is not a JSON number"),
])
def test_task_files_are_strict_json(text: str, problem: str) -> None:
    with pytest.raises(TaskFileError) as refused:
        parse_task_text(text)
    assert problem in str(refused.value)


def test_a_task_is_its_own_task_file_with_its_arrays_in_files(tmp_path) -> None:
    task = load_task_file(SAMPLES / "solve-file.json")
    arrays = [name for name in task.inputs if "array" in task.describe_inputs()[name]]
    for name in arrays:
        np.save(tmp_path / f"{name}.npy", task.inputs[name])
    document = task.document({name: f"{name}.npy" for name in arrays})
    rebuilt = parse_task(json.loads(json.dumps(document)), base_dir=tmp_path, map_files=True)
    assert rebuilt.describe_inputs() == task.describe_inputs()
    for name in arrays:
        assert isinstance(rebuilt.inputs[name].base, np.memmap)  # read from disk as needed, not held in memory
    for name in task.inputs:
        np.testing.assert_array_equal(rebuilt.input_items(name, 5, 9), task.input_items(name, 5, 9))


def test_a_mapped_npy_file_shorter_than_its_header_is_refused(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.ones((4, 3, 3)))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-20])
    document = {"operation": "invert", "inputs": {"a": {"file": "a.npy"}}}
    assert problems_of(document, base_dir=tmp_path, map_files=True)
