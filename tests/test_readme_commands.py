"""Every `python train.py ...`, `python scripts/...` and `python benchmarks/...` command in a fenced block of README.md
and docs/*.md (and benchmarks/README.md) still parses: a renamed option, a removed config or a script that lost an
argument breaks this test, not a reader's copy-paste.

train.py commands go through the CLI parser with `--print_config` (parse only: nothing is instantiated, so data and
model paths need not exist); scripts and benchmarks run until their argparse `parse_args` returns, then stop.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
ENTRY = re.compile(r"^(train\.py|scripts/\w+\.py|benchmarks/\w+\.py)$")

# Commands that cannot be checked here, by a substring of the command, with the reason.
SKIPPED = {
    "--config my.yaml": "placeholder: your own config file",
    "$([": "SLURM script line: a shell substitution decides the arguments",
}


def fenced_blocks(text: str) -> list[str]:
    """The contents of the ``` fenced blocks of a markdown text."""
    return re.findall(r"^ *```[^\n]*\n(.*?)^ *```", text, flags=re.MULTILINE | re.DOTALL)

# Words that stand for an option the text chooses (docs/distill.md's ablations: SWITCH = one of the listed options).
PLACEHOLDER_OPTIONS = {"SWITCH"}


def without_optional_groups(args: list[str]) -> list[str]:
    """A usage synopsis's optional groups (`[--tokenizer DIR]`) left out; a list value (`'[a.txt]'`) kept."""
    out, inside = [], False
    for arg in args:
        inside = inside or arg.startswith("[-")
        if not inside:
            out.append(arg)
        inside = inside and not arg.endswith("]")
    return out


def commands(text: str) -> list[list[str]]:
    """[entry, *args] of each litbert command in the fenced blocks: `\\` continuations joined, comments, shell
    prefixes (VAR=value, nice, srun, .venv/bin/python) and what follows `&&`, `|`, `;`, `>` dropped."""
    found = []
    for block in fenced_blocks(text):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            if not re.search(r"python3?\s+(train\.py|scripts/|benchmarks/)", line):
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # unbalanced quotes: not a command line
                continue
            starts = [i for i, w in enumerate(words[1:], 1) if ENTRY.match(w) and words[i - 1].endswith(("python",
                                                                                                          "python3"))]
            if not starts:
                continue
            args = words[starts[0]:]
            for stop in ("&&", "||", "|", ";", ">", "2>"):
                args = args[:args.index(stop)] if stop in args else args
            args = [a for a in args if a != "..." and a not in PLACEHOLDER_OPTIONS]  # `...`: "and more options"
            found.append(without_optional_groups(args))
    return found


def all_commands() -> list[tuple[str, str, list[str]]]:
    seen, out = set(), []
    for doc in DOCS:
        for command in commands(doc.read_text(encoding="utf-8")):
            line = shlex.join(command)
            if line not in seen:
                seen.add(line)
                out.append((doc.relative_to(REPO).as_posix(), line, command))
    return out


COMMANDS = all_commands()


def test_the_docs_have_commands_of_each_kind():
    entries = {command[0].split("/")[0] for _, _, command in COMMANDS}
    assert {"train.py", "scripts", "benchmarks"} <= entries and len(COMMANDS) > 30


class Parsed(Exception):
    """Raised by the patched `parse_args` once the arguments parsed: the script stops before doing anything."""


@pytest.mark.parametrize("doc, line, command", COMMANDS, ids=[f"{d}: {line[:90]}" for d, line, _ in COMMANDS])
def test_the_command_parses(doc, line, command, monkeypatch):
    reason = next((why for part, why in SKIPPED.items() if part in line), None)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(REPO)  # configs/... are relative to the repository
    entry, args = command[0], command[1:]
    out = io.StringIO()
    if entry == "train.py":
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            train.main([*args, "--print_config"])
        assert exit_info.value.code in (0, None), f"{doc}: `{line}` does not parse:\n{out.getvalue()}"
        return
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(REPO / entry), *args])
    monkeypatch.syspath_prepend(str(REPO))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(str(REPO / entry), run_name="__main__")
        except Parsed:
            return
        except SystemExit as err:
            assert err.code in (0, None), f"{doc}: `{line}` does not parse:\n{out.getvalue()}"
            return
    pytest.fail(f"{doc}: `{line}` never called argparse's parse_args")
