"""The documentation cannot rot: its examples are checked against the code.

Every fenced block and link in README.md and docs/*.md is read and checked:

- a ```json block that is a task file (has "operation") is validated by the task-file
  parser; one that is a node-protocol message (has "type") is decoded by the message codec,
  with a zero-filled payload of the size its "arrays" describe; a "submit" message is
  decoded the way the front-end decodes an upload, into a valid task;
- every `chainconsole …` command line in a fenced block parses with the CLI's own parser,
  and every `ssh … COMMAND` line names a user command the front-end knows;
- every relative link points at a file that exists, and at a heading that exists.

A block preceded by ``<!-- invalid -->`` is a deliberate counter-example: it must then be
refused. A ```json block may also show some members of an object alone (``"arrays": […]``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from console.cli.main import build_parser
from console.ssh.server import NODE_SUBSYSTEM
from console.ssh.user_commands import USAGE, Session
from protocol.errors import ChainconsoleError
from protocol.frames import ARRAY_DTYPES, Frame, encode_frame
from protocol.messages import MESSAGE_TYPES, decode_message
from protocol.taskfile import DEFAULT_LIMITS, parse_task
from protocol.upload import decode_upload

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SAMPLE_TASKS = REPO / "sample_tasks"

# Blocks in these languages hold no shell commands (output is fenced as ```text).
NOT_SHELL = {"json", "jsonl", "mermaid", "text", "python", "csv"}
# Words that run the command after them: `exec chainconsole node …` is a chainconsole line.
WRAPPERS = {"exec", "nohup", "srun", "time", "env", "command", "sudo"}
# Placeholders a reader replaces, and a value of the type the CLI expects there; a usage
# synopsis (`[--slots N]`) reads as the command with every option given.
PLACEHOLDERS = {"HOST:PORT": "127.0.0.1:8022", "N": "2", "UP": "127.0.0.1:8022", "SHARE": "0.1"}
SHELL_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\([^)]*\)|\$\w+")
# ssh options that take an argument (OpenSSH ssh(1)).
SSH_OPTIONS_WITH_VALUE = set("BbcDEeFIiJLlmOoPpQRSWw")
USER_COMMANDS = {name.removeprefix("cmd_") for name in dir(Session) if name.startswith("cmd_")} | {"help"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int
    language: str
    text: str
    marker: str
    """The first word of an HTML comment just above the block (``invalid``), or ""."""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with its language and the marker comment above it."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    index, previous = 0, ""
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith("```"):
            info = stripped.lstrip("`")
            fence = stripped[: len(stripped) - len(info)]
            start = index + 1
            index = start
            while index < len(lines) and not lines[index].strip().startswith(fence):
                index += 1
            marker = re.fullmatch(r"<!--\s*(\w+).*-->", previous)
            text = "\n".join(lines[start:index])
            blocks.append(Block(path, start, info.strip().lower(), text, marker.group(1) if marker else ""))
            previous = ""
        elif stripped:
            previous = stripped
        index += 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]
JSON_BLOCKS = [b for b in ALL_BLOCKS if b.language in ("json", "jsonl")]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language not in NOT_SHELL]


def _json_values(block: Block) -> list[object]:
    """The JSON values a block holds: one document, JSON lines, or some members of an object."""
    if block.language == "jsonl":
        return [json.loads(line) for line in block.text.splitlines() if line.strip()]
    try:
        return [json.loads(block.text)]
    except json.JSONDecodeError:
        return [json.loads("{" + block.text + "}")]  # the members of an object, shown alone


def _payload_for(arrays: object) -> bytes:
    """Zero bytes of exactly the size an "arrays" description asks for."""
    size = 0
    for entry in arrays if isinstance(arrays, list) else []:
        dtype = ARRAY_DTYPES[entry["dtype"]]
        size += dtype.itemsize * math.prod(entry["shape"])
    return bytes(size)


def _check_json(value: object) -> str:
    """Check one documented JSON value against the code; return what it was checked as."""
    if not isinstance(value, dict):
        return "json"
    if value.get("type") == "submit":
        header = {**value, "arrays": value.get("arrays", [])}
        upload = b"".join(bytes(p) for p in encode_frame(header, [_payload_for(header["arrays"])]))
        decode_upload(upload, DEFAULT_LIMITS)
        return "upload"
    if "type" in value:
        decode_message(Frame(value, _payload_for(value.get("arrays"))))
        return "message"
    if "event" in value:  # a line a user command prints, which may name the operation
        return "event"
    if "operation" in value:
        files = any("file" in spec for spec in value.get("inputs", {}).values() if isinstance(spec, dict))
        parse_task(value, base_dir=SAMPLE_TASKS if files else REPO)
        return "task"
    return "json"


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[b.where for b in JSON_BLOCKS])
def test_json_examples_are_what_the_code_accepts(block: Block) -> None:
    if block.marker == "invalid":
        with pytest.raises((ChainconsoleError, ValueError, KeyError, TypeError)):
            for value in _json_values(block):
                _check_json(value)
        return
    for value in _json_values(block):
        _check_json(value)


def test_the_docs_show_tasks_and_every_message_type() -> None:
    """The checks above see real examples: a task file and each message of the protocol."""
    kinds, types = set(), set()
    for block in JSON_BLOCKS:
        if block.marker == "invalid":
            continue
        for value in _json_values(block):
            kinds.add(_check_json(value))
            if isinstance(value, dict) and "type" in value:
                types.add(value["type"])
    assert {"task", "message", "upload"} <= kinds
    assert set(MESSAGE_TYPES) <= types, f"no example of {sorted(set(MESSAGE_TYPES) - types)}"


# -- command lines -----------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """One shell command from a fenced block: its words after any wrapper."""

    where: str
    text: str
    words: tuple[str, ...]


def _logical_lines(block: Block) -> list[str]:
    """The block's command lines: continuations joined, prompts stripped, output dropped."""
    joined, current = [], ""
    for raw in block.text.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        joined.append(current + raw)
        current = ""
    if current:
        joined.append(current)
    if any(line.startswith("$ ") for line in joined):  # a transcript: only prompted lines are input
        return [line[2:] for line in joined if line.startswith("$ ")]
    return joined


def _commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, split at ``&&``, ``|``, ``;`` and redirections."""
    line = SHELL_VARIABLE.sub("1", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and all(c in "();<>|&" for c in token):
            if token[0] in "<>" and current and current[-1].isdigit():
                current.pop()  # the 2 of 2> belongs to the redirection
            commands.append(current)
            current = [] if token[0] not in "<>" else ["<redirect>"]
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c and c[0] != "<redirect>"]


def _strip_wrappers(words: list[str]) -> list[str]:
    """The command itself: without ``ExecStart=``, variable assignments, ``exec``, ``sudo -u X`` …"""
    words = list(words)
    if words and words[0].startswith("ExecStart="):
        words[0] = words[0].removeprefix("ExecStart=")
    while words and (words[0] in WRAPPERS or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
        if words.pop(0) == "sudo":
            while words and words[0].startswith("-"):
                words = words[2:] if words[0] in ("-u", "-g") else words[1:]
    return words


def command_lines(program: str) -> list[CommandLine]:
    found = []
    for block in SHELL_BLOCKS:
        for line in _logical_lines(block):
            for words in _commands(line):
                words = _strip_wrappers(words)
                if words and Path(words[0]).name == program:
                    found.append(CommandLine(block.where, line.strip(), tuple(words[1:])))
    return found


CHAINCONSOLE_LINES = command_lines("chainconsole")
SSH_LINES = command_lines("ssh")


@pytest.mark.parametrize("command", CHAINCONSOLE_LINES, ids=[f"{c.where} {c.text}" for c in CHAINCONSOLE_LINES])
def test_chainconsole_command_lines_parse(command: CommandLine) -> None:
    words = [w.strip("[]") for w in command.words]
    words = [PLACEHOLDERS.get(w, w) for w in words if w not in ("", "...", "…")]
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(words)
        except SystemExit as exit_:
            wants_help = {"-h", "--help"} & set(words)
            assert exit_.code == 0 and wants_help, f"{command.where}: {command.text}\n{errors.getvalue()}"


def _remote_command(words: tuple[str, ...]) -> list[str]:
    """What an ssh line runs on the far side: the words after the options and destination."""
    index = 0
    while index < len(words) and words[index].startswith("-"):
        option = words[index]
        takes_value = len(option) == 2 and option[1] in SSH_OPTIONS_WITH_VALUE
        index += 2 if takes_value else 1
    return list(words[index + 1:])


def _ssh_flags(words: tuple[str, ...]) -> set[str]:
    """The single-letter flags of an ssh line (``-Ts`` counts as ``-T`` and ``-s``)."""
    flags = set()
    for word in words:
        if not word.startswith("-"):
            break
        flags |= {f"-{letter}" for letter in word[1:]} if not word.startswith("--") else {word}
    return flags


@pytest.mark.parametrize("command", SSH_LINES, ids=[f"{c.where} {c.text}" for c in SSH_LINES])
def test_ssh_command_lines_name_user_commands(command: CommandLine) -> None:
    remote = _remote_command(command.words)
    if not remote:
        return  # a login without a command: the front-end answers with its help
    if "-s" in _ssh_flags(command.words):
        assert remote == [NODE_SUBSYSTEM], f"{command.where}: no subsystem {remote[0]!r}"
        return
    assert remote[0] in USER_COMMANDS, f"{command.where}: no user command {remote[0]!r}"
    for word in remote[1:]:
        if word.startswith("-"):
            assert word in USAGE, f"{command.where}: {remote[0]} has no option {word}"


def test_the_docs_show_the_commands_they_are_about() -> None:
    """Guard the guards: the line finders above do find the documented commands."""
    subcommands = {c.words[0] for c in CHAINCONSOLE_LINES if c.words and not c.words[0].startswith("-")}
    assert {"run", "serve", "node", "submit", "keys", "result", "delete"} <= subcommands
    assert {"submit", "result"} <= {_remote_command(c.words)[0] for c in SSH_LINES if _remote_command(c.words)}


# -- links -------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"")
CODE_BLOCK = re.compile(r"^\s*(`{3,}).*?^\s*\1\s*$", flags=re.M | re.S)


def _prose(path: Path) -> str:
    """The file without its code: links inside code are examples, not links."""
    return re.sub(r"`[^`\n]*`", "", CODE_BLOCK.sub("", path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated heading gets -1, -2 …"""
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        base, suffix = slug(match.group(1)), 0
        name = base
        while name in found:
            suffix += 1
            name = f"{base}-{suffix}"
        found.add(name)
    return found


def relative_links() -> list[tuple[str, Path, str]]:
    links = []
    for path in DOCS:
        for match in LINK.finditer(_prose(path)):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
                continue
            links.append((f"{path.relative_to(REPO)} -> {target}", path, target))
    return links


LINKS = relative_links()


@pytest.mark.parametrize("where,source,target", LINKS, ids=[link[0] for link in LINKS])
def test_relative_links_point_at_what_exists(where: str, source: Path, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    destination = (source.parent / file_part).resolve() if file_part else source
    assert destination.exists(), f"{where}: no such file"
    if anchor and destination.suffix == ".md":
        assert anchor in anchors(destination), f"{where}: no heading with anchor #{anchor}"


def test_the_slugs_match_githubs() -> None:
    assert slug("SSH layer") == "ssh-layer"
    assert slug("`generate`: items drawn reproducibly") == "generate-items-drawn-reproducibly"
    assert slug("Chains: A → B → C") == "chains-a--b--c"
    assert {"frames", "messages", "ssh-layer"} <= anchors(REPO / "docs" / "protocol.md")
