"""Every Python example in the README, CONTRIBUTING.md and docs/ runs, and prints what the text says it prints.

The conventions (also described in CONTRIBUTING.md):

- Each fenced ```python block (```python title="..."``` too) is a whole program. It runs in a fresh interpreter,
  from a file of its own (so ``if __name__ == "__main__":`` guards work under every start method), in an empty
  directory, with this checkout first on the path and no PARALLELIZE_* variable from outside. It must exit with
  status 0.
- A fenced ```text title="Output"``` block says what the python blocks right before it print on stdout, exactly:
  all of them, back to the previous Output block or fence of another language, so that the side-by-side snippets
  of a peer library and of parallelize share one Output block. In the output, ``...`` stands for any text within
  a line, and a line holding only ``...`` for any number of lines (a pid, a port, a timing).
- An HTML comment on the line before the fence qualifies the block: ``<!-- example: skip REASON -->`` (never run;
  the test is reported as skipped with the reason) or ``<!-- example: requires MODULE -->`` (run only where MODULE
  can be imported, skipped with that reason elsewhere). Any other ``<!-- example: ... -->`` comment, or one that
  is not right before a python fence, fails the test: no block is left out silently.

The blocks run a few at a time, each with a deadline, in a module fixture; one test per block reports the result.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
DEADLINE_S = 60.0  # one example; they take well under a second each on an idle machine
RUNNING_AT_ONCE = 3
OUTPUT_INFO = 'text title="Output"'

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*example:\s*(?P<text>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block of a page."""

    path: Path
    line: int  # of the opening fence, counted from 1
    info: str  # what follows the opening fence: "python", 'text title="Output"', ...
    code: str
    directive: str | None  # the text of an <!-- example: ... --> comment right before it

    @property
    def language(self) -> str:
        return self.info.split(" ", 1)[0]

    @property
    def where(self) -> str:
        return f"{_name(self.path)}:{self.line}"


@dataclass
class Example:
    """A python block to run, with what it must print (None: anything) or why it does not run."""

    block: Block
    expected: str | None
    skip: str | None


def _name(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown file, and the mistakes found in its example comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None  # an example comment waiting for its fence
    number = 0
    while number < len(lines):
        line = lines[number]
        directive = _DIRECTIVE.match(line)
        opening = _FENCE.match(line)
        if directive:
            if pending:
                problems.append(f"{_name(path)}:{pending[0]}: example comment not followed by a fence")
            pending = (number + 1, directive["text"])
        elif opening:
            indent, fence = opening["indent"], opening["fence"]
            body: list[str] = []
            end = number + 1
            closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            while end < len(lines) and not closing.match(lines[end]):
                text = lines[end]
                body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
                end += 1
            directive_text = None
            if pending is not None:
                if pending[0] == number:  # the line right before the fence
                    directive_text = pending[1]
                else:
                    problems.append(f"{_name(path)}:{pending[0]}: example comment not right before a "
                                    "fence")
                pending = None
            blocks.append(Block(path, number + 1, opening["info"], "\n".join(body) + "\n", directive_text))
            number = end
        elif line.strip() and pending is not None:
            problems.append(f"{_name(path)}:{pending[0]}: example comment not right before a fence")
            pending = None
        number += 1
    return blocks, problems


def _examples(paths: list[Path]) -> tuple[list[Example], list[str]]:
    examples: list[Example] = []
    problems: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        blocks, found = _blocks(path)
        problems += found
        waiting: list[Example] = []  # python blocks since the last Output block or other fence
        for block in blocks:
            if block.info == OUTPUT_INFO:
                if not waiting:
                    problems.append(f"{block.where}: an Output block must follow a python block")
                for example in waiting:
                    example.expected = block.code
                waiting = []
                continue
            if block.language != "python":
                if block.directive is not None:
                    problems.append(f"{block.where}: an example comment before a {block.info or 'plain'} block")
                waiting = []
                continue
            skip = None
            if block.directive is not None:
                kind, _, rest = block.directive.partition(" ")
                if kind == "skip" and rest:
                    skip = rest
                elif kind == "requires" and rest:
                    if importlib.util.find_spec(rest) is None:
                        skip = f"needs {rest}, which is not installed"
                else:
                    problems.append(f"{block.where}: unknown example comment {block.directive!r} (use 'skip REASON' "
                                    "or 'requires MODULE')")
            examples.append(Example(block, None, skip))
            waiting.append(examples[-1])
    return examples, problems


EXAMPLES, PROBLEMS = _examples(SOURCES)


def _pattern(expected: str) -> re.Pattern[str]:
    """The output as a pattern: ``...`` is any text within a line, a line of only ``...`` any number of lines."""
    parts = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.rstrip().split("...")) + r"[ \t]*\n")
    return re.compile("".join(parts))


def _run(example: Example) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PARALLELIZE_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="parallelize-example-") as directory:
        script = Path(directory) / "example.py"
        script.write_text(example.block.code, encoding="utf-8")
        # A session of its own: on the deadline, the example and every process it started are killed together.
        process = subprocess.Popen([sys.executable, str(script)], cwd=directory, env=environment, text=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            stderr += f"\n(killed after {DEADLINE_S:g} s)"
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, subprocess.CompletedProcess[str]]:
    runnable = [example for example in EXAMPLES if example.skip is None]
    with concurrent.futures.ThreadPoolExecutor(RUNNING_AT_ONCE, thread_name_prefix="docs-example") as runner:
        results = dict(zip([example.block.where for example in runnable], runner.map(_run, runnable), strict=True))
    return results


def test_example_comments_are_well_formed() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_examples_are_found() -> None:
    # A broken parser would make every example test vanish, and pass.
    assert len(EXAMPLES) >= 20
    assert any(example.block.path.name == "README.md" for example in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.block.where for example in EXAMPLES])
def test_example_runs(example: Example, outcomes: dict[str, subprocess.CompletedProcess[str]]) -> None:
    if example.skip is not None:
        pytest.skip(f"{example.block.where}: {example.skip}")
    result = outcomes[example.block.where]
    report = f"{example.block.where}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"exit status {result.returncode}\n{report}"
    if example.expected is not None:
        assert _pattern(example.expected).fullmatch(result.stdout.replace("\r\n", "\n")), \
            f"--- expected\n{example.expected}{report}"


@pytest.mark.parametrize(("expected", "printed", "matches"), [
    ("a\nb\n", "a\nb\n", True),
    ("a\n", "a\nb\n", False),
    ("pid ...\n", "pid 4242\n", True),
    ("first\n...\nlast\n", "first\nx\ny\nlast\n", True),
    ("first\n...\nlast\n", "first\nlast\n", True),
    ("[1, ...]\n", "[2, 3]\n", False),
])
def test_output_pattern(expected: str, printed: str, matches: bool) -> None:
    assert bool(_pattern(expected).fullmatch(printed)) is matches


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_parser_reads_comments_fences_and_outputs(tmp_path: Path) -> None:
    page = _page(tmp_path, 'Text\n\n<!-- example: skip needs a cluster -->\n```python\nprint(1)\n```\n\n'
                           '````markdown\n```python\nnot an example\n```\n````\n\n'
                           '- item\n\n    ```python\n    print(2)\n    ```\n\n'
                           '    ```text title="Output"\n    2\n    ```\n'
                           '\n<!-- example: typo -->\n\nprose\n')
    blocks, problems = _blocks(page)
    assert [(b.info, b.code, b.directive) for b in blocks] == [
        ("python", "print(1)\n", "skip needs a cluster"),
        ("markdown", "```python\nnot an example\n```\n", None),
        ("python", "print(2)\n", None),
        (OUTPUT_INFO, "2\n", None),
    ]
    assert problems == [f"{page}:24: example comment not right before a fence"]


def test_an_output_block_checks_every_python_block_before_it(tmp_path: Path) -> None:
    page = _page(tmp_path, '```python title="peer"\nprint(1)\n```\n\nprose\n\n```python title="ours"\nprint(1)\n```\n\n'
                           '```text title="Output"\n1\n```\n\n```python\nprint(2)\n```\n\n```bash\nls\n```\n\n'
                           '<!-- example: requires no_such_module_here -->\n```python\nprint(3)\n```\n\n'
                           '<!-- example: sometimes -->\n```python\nprint(4)\n```\n')
    examples, problems = _examples([page])
    assert [(e.block.code, e.expected, e.skip) for e in examples] == [
        ("print(1)\n", "1\n", None),
        ("print(1)\n", "1\n", None),
        ("print(2)\n", None, None),
        ("print(3)\n", None, "needs no_such_module_here, which is not installed"),
        ("print(4)\n", None, None),
    ]
    assert problems == [f"{page}:29: unknown example comment 'sometimes' (use 'skip REASON' or 'requires MODULE')"]
