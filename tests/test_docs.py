"""Every example in README.md and docs/*.md runs: an example that does not run fails CI.

Each Markdown file's fenced blocks run in order, in a fresh temporary folder that holds a link
to the repository's ``specs/``, sharing one Python namespace per file:

- ```python``` blocks are executed. A block that must not run is fenced ```python no-run
  REASON``` and is reported as skipped with that reason (``test_no_run_blocks``), never
  silently.
- ```toml file=NAME``` blocks are written to NAME in the folder (spec files the later
  commands read); every other ```toml``` block must be valid TOML.
- ```console``` / ```bash``` / ```sh``` blocks: each line ``$ verispec ARGS`` (continued with a
  trailing backslash) runs through click's CliRunner and must exit 0, or N when the line says
  ``# exit status N``. In a block fenced ```console exact```, every output line shown after a
  command must appear in that command's output. Lines without ``$`` are commands to reproduce
  figures (training runs, benchmarks: minutes to hours); they are not run, but every
  ``verispec`` option they use must exist, every ``--flag`` of a ``python bench/X.py`` must
  appear in that script, and the ``scripts/dev.sh`` subcommands they name must exist.
- ```text``` and unlabelled blocks are output listings and are not run; any other language is
  an error (so no example escapes by its label).

The README is at most 200 lines; docs never point at files outside the repository, and their
relative links resolve. The engine option tables of docs/specfile.md list exactly the fields
and defaults of the engines' ``Config`` classes.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
import torch
from click.testing import CliRunner

from verispec.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"console", "bash", "sh"}
PLAIN_LANGS = {"", "text"}
FENCE = re.compile(r"^(\s*)```(.*)$")
EXIT = re.compile(r"#\s*exit status (\d+)")


@attrs.frozen
class Block:
    """A fenced block: its file, first line number, language, the rest of the fence line and
    the body (dedented by the fence's indentation)."""

    path: Path
    line: int
    lang: str
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, info = match.group(1), match.group(2).strip()
        lang, _, rest = info.partition(" ")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        assert j < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: unclosed code fence"
        out.append(Block(path, i + 1, lang.lower(), rest.strip(), "\n".join(body) + "\n"))
        i = j + 1
    return out


def commands(body: str) -> list[tuple[str, list[str]]]:
    """``(command line, output lines shown after it)`` for each ``$`` line of a block, with
    backslash continuations joined."""
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if pending:
            pending += " " + line.strip()
        elif line.startswith("$ "):
            pending = line[2:].strip()
        else:
            if out and line.strip():
                out[-1][1].append(line.strip())
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        out.append((pending, []))
        pending = ""
    return out


def reproduction_lines(body: str) -> list[str]:
    """The non-``$`` command lines of a shell block, continuations joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in body.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() and not pending:
            continue
        pending = f"{pending} {line.strip()}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        out.append(pending)
        pending = ""
    return out


def _options(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        names.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
    return names | {"--help"}


def check_reproduction(block: Block) -> None:
    """The options of the ``verispec``, ``python bench/...`` and ``scripts/dev.sh`` commands a
    reproduction block shows exist."""
    assert isinstance(main, click.Group)
    for line in reproduction_lines(block.body):
        if line.startswith("$"):
            continue
        words = shlex.split(line, comments=True)
        for k, word in enumerate(words):
            flags = [w.split("=", 1)[0] for w in words[k + 1 :] if w.startswith("--")]
            if Path(word).name == "verispec" and k + 1 < len(words):
                sub = main.commands.get(words[k + 1])
                assert sub is not None, f"{block.where}: no command 'verispec {words[k + 1]}'"
                unknown = sorted(set(flags) - _options(sub))
                assert not unknown, f"{block.where}: verispec {sub.name} has no {unknown}"
            elif word.startswith("bench/") and word.endswith(".py"):
                script = ROOT / word
                assert script.is_file(), f"{block.where}: {word} does not exist"
                text = script.read_text()
                missing = [f for f in flags if f'"{f}"' not in text]
                assert not missing, f"{block.where}: {word} has no {missing}"
            elif word == "scripts/dev.sh" and k + 1 < len(words):
                text = (ROOT / word).read_text()
                assert f"{words[k + 1]})" in text, f"{block.where}: dev.sh has no {words[k + 1]}"


def run_commands(block: Block) -> None:
    exact = block.info.split(" ")[0] == "exact"
    for line, shown in commands(block.body):
        wanted = EXIT.search(line)
        code = int(wanted.group(1)) if wanted else 0
        args = shlex.split(line, comments=True)
        assert args and args[0] == "verispec", (
            f"{block.where}: only '$ verispec ...' commands run here, got {line!r}: show other "
            "commands without '$'"
        )
        result = CliRunner().invoke(main, args[1:])
        output = result.output
        assert result.exit_code == code, (
            f"{block.where}: {line!r} exited {result.exit_code}, expected {code}\n{output}"
            + (f"\n{result.exception!r}" if result.exception else "")
        )
        if exact:
            flat = " ".join(output.split())
            for expected in shown:
                assert " ".join(expected.split()) in flat, (
                    f"{block.where}: {line!r} did not print {expected!r}:\n{output}"
                )


def run_file(path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "specs").symlink_to(ROOT / "specs", target_is_directory=True)
    monkeypatch.chdir(folder)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks(path):
        if block.lang == "python":
            if block.info.startswith("no-run"):
                continue
            code = compile(block.body, block.where, "exec")
            try:
                exec(code, namespace)
            except Exception as err:
                raise AssertionError(f"{block.where}: the example raised {err!r}") from err
        elif block.lang == "toml":
            name = re.fullmatch(r"file=(\S+)", block.info)
            try:
                tomllib.loads(block.body)
            except tomllib.TOMLDecodeError as err:
                raise AssertionError(f"{block.where}: not valid TOML: {err}") from None
            if name:
                (folder / name.group(1)).write_text(block.body)
        elif block.lang in RUN_LANGS:
            run_commands(block)
            check_reproduction(block)
        else:
            assert block.lang in PLAIN_LANGS, (
                f"{block.where}: unknown block language {block.lang!r} (python, toml, console, "
                "bash, sh, text)"
            )


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only contends on a busy machine
    try:
        run_file(path, tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(threads)


NO_RUN = [b for p in DOCS for b in blocks(p) if b.lang == "python" and b.info.startswith("no-run")]


@pytest.mark.parametrize("block", NO_RUN, ids=[b.where for b in NO_RUN])
def test_no_run_blocks(block: Block) -> None:
    reason = block.info[len("no-run") :].strip()
    assert reason, f"{block.where}: a no-run block says why it does not run"
    compile(block.body, block.where, "exec")  # it is Python at least
    pytest.skip(f"{block.where}: {reason}")


def test_readme_is_a_short_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_docs_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text
    for target, _ in LINK.findall(text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def _toml_value(value: Any) -> str:
    if isinstance(value, torch.dtype):
        return f'"{str(value).removeprefix("torch.")}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_specfile_option_tables_match_the_config_classes() -> None:
    from verispec.engines.base import ENGINES

    text = (ROOT / "docs" / "specfile.md").read_text()
    for name in ENGINES.names():
        config = ENGINES.lookup(name).Config
        marker = f"<!-- options: {name} ({config.__module__}.{config.__qualname__}) -->"
        assert marker in text, f"docs/specfile.md has no option table for engine {name!r}"
        table = text[text.index(marker) :].split("\n\n", 2)[1]
        rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", table, re.MULTILINE)
        expected = [(f.name, _toml_value(f.default)) for f in attrs.fields(config)]
        assert rows == expected, f"docs/specfile.md, engine {name!r}: {rows} != {expected}"
