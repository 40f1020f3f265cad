"""Static typing of the decorator: mypy sees the function's own signature through ``@parallel``.

mypy runs once (module-scoped fixture) over one snippet; each test looks at the lines it cares about.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SNIPPET = textwrap.dedent('''
    from concurrent.futures import Future
    from parallelize import ParallelFunction, parallel


    @parallel
    def bare(x: int) -> int:
        return x


    @parallel(n_jobs=2, chunk_size=4)
    def configured(name: str, times: int = 1) -> bytes:
        return name.encode() * times


    reveal_type(bare([1, 2]))  # L:bare-call
    reveal_type(configured(["a"]))  # L:configured-call
    reveal_type(bare.serial(1))  # L:serial-result
    reveal_type(bare.submit(1))  # L:submit
    reveal_type(bare.imap([1]))  # L:imap
    reveal_type(bare.map_unordered([1]))  # L:map-unordered
    reveal_type(bare)  # L:decorated
    same: ParallelFunction[[int], int] = bare
    ok_serial: int = bare.serial(3)
    ok_keywords: bytes = configured.serial("a", times=2)
    bare.serial("a")  # L:bad-serial-type
    configured.serial("a", time=2)  # L:bad-serial-keyword
    bare.submit("a")  # L:bad-submit-type
    wrong: list[str] = bare([1])  # L:bad-result
''')


def _line_of(tag: str) -> int:
    for number, line in enumerate(SNIPPET.splitlines(), start=1):
        if line.endswith(f"# L:{tag}"):
            return number
    raise AssertionError(f"no line tagged {tag}")


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("typing")
    (directory / "snippet.py").write_text(SNIPPET)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
         "--show-error-codes", "--cache-dir", str(directory / ".mypy_cache"), "snippet.py"],
        cwd=directory, capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.stderr == "", done.stderr
    return done.stdout


def _messages(output: str, tag: str) -> list[str]:
    line = _line_of(tag)
    return [m[1] for m in re.finditer(rf"^snippet\.py:{line}: (.*)$", output, re.MULTILINE)]


def _revealed(output: str, tag: str) -> str:
    """The revealed type without module prefixes (mypy 1 prints ``builtins.list[builtins.int]``, mypy 2
    ``list[int]``)."""
    notes = [m for m in _messages(output, tag) if m.startswith("note: Revealed type is")]
    assert len(notes) == 1, output
    return re.sub(r"\b(?:\w+\.)+(?=\w)", "", notes[0].removeprefix("note: Revealed type is ").strip('"'))


def test_calling_a_bare_decorated_function_gives_a_list_of_its_return_type(mypy_output: str) -> None:
    assert _revealed(mypy_output, "bare-call") == "list[int]"


def test_calling_a_configured_decorated_function_gives_a_list_of_its_return_type(mypy_output: str) -> None:
    assert _revealed(mypy_output, "configured-call") == "list[bytes]"


def test_serial_returns_the_function_return_type(mypy_output: str) -> None:
    assert _revealed(mypy_output, "serial-result") == "int"


def test_submit_returns_a_future_of_the_return_type(mypy_output: str) -> None:
    assert _revealed(mypy_output, "submit") == "Future[int]"


def test_imap_yields_the_return_type(mypy_output: str) -> None:
    assert _revealed(mypy_output, "imap").endswith("[int]")


def test_map_unordered_gives_a_list_of_the_return_type(mypy_output: str) -> None:
    assert _revealed(mypy_output, "map-unordered") == "list[int]"


def test_decorated_function_is_generic_in_parameters_and_result(mypy_output: str) -> None:
    assert _revealed(mypy_output, "decorated") == "ParallelFunction[[x: int], int]"


def test_serial_with_a_wrong_argument_type_is_an_error(mypy_output: str) -> None:
    errors = [m for m in _messages(mypy_output, "bad-serial-type") if m.startswith("error:")]
    assert errors and "[arg-type]" in errors[0], mypy_output


def test_serial_with_an_unknown_keyword_is_an_error(mypy_output: str) -> None:
    errors = [m for m in _messages(mypy_output, "bad-serial-keyword") if m.startswith("error:")]
    assert errors and "[call-arg]" in errors[0], mypy_output


def test_submit_with_a_wrong_argument_type_is_an_error(mypy_output: str) -> None:
    errors = [m for m in _messages(mypy_output, "bad-submit-type") if m.startswith("error:")]
    assert errors and "[arg-type]" in errors[0], mypy_output


def test_result_list_of_the_wrong_type_is_an_error(mypy_output: str) -> None:
    errors = [m for m in _messages(mypy_output, "bad-result") if m.startswith("error:")]
    assert errors and "[assignment]" in errors[0], mypy_output


def test_correct_usage_has_no_errors(mypy_output: str) -> None:
    tagged = {_line_of(tag) for tag in ("bad-serial-type", "bad-serial-keyword", "bad-submit-type", "bad-result")}
    stray = [line for line in mypy_output.splitlines()
             if ": error:" in line and int(line.split(":")[1]) not in tagged]
    assert stray == []
