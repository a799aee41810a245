"""The suite keeps its shape: what tests share lives in tests/support/, imported as
`support.<module>`; no test imports a conftest or another module of tests/ by its
bare name (which resolves to whichever folder pytest put on sys.path last); and
there is one way to wait, support.waiting."""

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"
WAITING = re.compile(r"^_?wait(_|$)")


def _sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _bare_names() -> set[str]:
    """Names under which a module of tests/ (outside support/) could be imported."""
    names = set()
    for path in _sources():
        if SUPPORT in path.parents:
            continue
        names.add(path.stem)
        names.update(p.name for p in path.parents if (p / "__init__.py").exists())
    return names - {"__init__"}


def _imported(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_no_test_imports_a_conftest_or_a_test_folder_module_by_bare_name():
    bare = _bare_names()
    found = [
        f"{path.relative_to(TESTS)}:{line}: import {module}"
        for path in _sources()
        for line, module in _imported(ast.parse(path.read_text()))
        if module.split(".")[0] in bare
    ]
    assert not found, (
        "import shared helpers from tests/support/ (`from support.<module> import ...`), "
        "and put fixtures in support/fixtures.py or the folder's conftest.py:\n" + "\n".join(found)
    )


def test_waiting_loops_live_in_support_waiting_only():
    found = [
        f"{path.relative_to(TESTS)}:{node.lineno}: def {node.name}"
        for path in _sources()
        if path != SUPPORT / "waiting.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and WAITING.match(node.name)
    ]
    assert not found, (
        "wait with support.waiting (wait_for, wait_state, wait_row_state):\n" + "\n".join(found)
    )


def test_the_checks_above_see_what_they_look_for():
    """Neither check passes for want of something to look at."""
    assert {"conftest", "test_suite_layout", "cli"} <= _bare_names()
    assert "support" not in _bare_names() and "waiting" not in _bare_names()
    lines = ast.parse("from conftest import wait_for\nimport watch\nfrom support import x\n")
    assert [m for _, m in _imported(lines)] == ["conftest", "watch", "support"]
    assert WAITING.match("wait_state") and WAITING.match("_wait") and not WAITING.match("waiter")
