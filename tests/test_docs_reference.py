"""The documentation and the code name the same options and environment variables.

The truth is the code: ``parallelize._config.OPTIONS`` for the options, and for the variables every
``PARALLELIZE_*`` name the package reads (the options' variables, ``_config.ENV_VARIABLES``, and every other
variable, found as a string constant anywhere in the package's source). A new option or variable fails these
tests until the options table of docs/decorator.md, or the variables table of docs/configuration.md, lists it;
an option or variable the docs name but the code does not have fails them too.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

from parallelize import _config, _env

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "parallelize"
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]
_VARIABLE = re.compile(r"PARALLELIZE_[A-Z][A-Z0-9_]*")


def _variables_in_code() -> dict[str, str]:
    """Every PARALLELIZE_* variable the package reads, with the file that names it."""
    found = {variable: "parallelize/_config.py (an option's variable)" for variable in _config.ENV_VARIABLES}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _VARIABLE.fullmatch(node.value):
                found.setdefault(node.value, str(path.relative_to(REPO)))
    return found


def _table(path: Path, heading: str) -> list[list[str]]:
    """The rows (cells without their backticks) of the first table under *heading*."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r} in {path.name}"
    return rows[2:]  # past the header and its rule


def test_every_option_is_in_the_options_table_and_nothing_else() -> None:
    rows = _table(REPO / "docs" / "decorator.md", "## Options")
    documented = [row[0] for row in rows]
    assert len(documented) == len(set(documented)), "an option is listed twice"
    assert set(documented) - set(_config.OPTIONS) == set(), "documented, but not an option"
    assert set(_config.OPTIONS) - set(documented) == set(), "options missing from the table in docs/decorator.md"


def test_the_options_table_names_each_options_variable() -> None:
    for name, _default, variable, *_ in _table(REPO / "docs" / "decorator.md", "## Options"):
        expected = f"{_env.PREFIX}{name.upper()}" if _config.OPTIONS[name].env is not None else "—"
        assert variable == expected, f"{name}: the table says {variable!r}"


def test_every_variable_is_in_the_configuration_table_and_nothing_else() -> None:
    code = _variables_in_code()
    rows = _table(REPO / "docs" / "configuration.md", "## Environment variables")
    documented = [row[0] for row in rows]
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    missing = {variable: where for variable, where in code.items() if variable not in documented}
    assert not missing, f"variables read by the code but missing from docs/configuration.md: {missing}"
    assert set(documented) - set(code) == set(), "documented, but read nowhere in the code"
    for variable, option, *_ in rows:
        if variable in _config.ENV_VARIABLES:
            assert option == _config.ENV_VARIABLES[variable], f"{variable}: the table says option {option!r}"


def test_the_docs_name_no_variable_the_code_does_not_read() -> None:
    code = _variables_in_code()
    unknown = sorted({f"{path.relative_to(REPO)}: {variable}" for path in DOCS if path.exists()
                      for variable in _VARIABLE.findall(path.read_text(encoding="utf-8")) if variable not in code})
    assert not unknown


def test_every_variable_read_is_known_to_the_typo_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # A variable the package reads but the unknown-variable check does not know would warn as a typo when set.
    for variable in _variables_in_code():
        monkeypatch.setenv(variable, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _config.check_environment()


def test_the_variable_scan_finds_the_variables_that_belong_to_no_option() -> None:
    # The scan itself works: these are read outside the option table.
    assert {"PARALLELIZE_MAX_CPU", "PARALLELIZE_DISABLE", "PARALLELIZE_WORKER_START_TIMEOUT",
            "PARALLELIZE_PROGRESS_INTERVAL", "PARALLELIZE_DASHBOARD", "PARALLELIZE_DASHBOARD_KEY"} <= \
        set(_variables_in_code())
