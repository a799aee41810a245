"""What the project installs is what its code imports.

Every third-party module imported by nbcloud and workers comes from a
distribution that pyproject.toml declares (not one that only the test extras,
or a dependency's dependency, happen to bring). `.ci/plain-install.sh` proves
the same in a virtualenv without the test extras; scripts/check_imports.py,
which it runs, is checked here too.
"""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.paths import load_script

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"nbcloud", "workers"}


def _declared(requirements: list[str]) -> set[str]:
    """The distribution names of requirement strings, normalised (PEP 503)."""
    return {
        re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r)[0]).lower() for r in requirements
    }


class _Imports(ast.NodeVisitor):
    """The modules a file imports on this Python (the project's): of a branch on
    `sys.version_info` (nbc's code for 3.9, say), only the one taken here."""

    def __init__(self):
        self.names: list[str] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (
            isinstance(test, ast.Compare)
            and ast.unparse(test.left) == "sys.version_info"
            and len(test.ops) == 1
            and isinstance(test.comparators[0], ast.Tuple)
        ):
            taken = eval(compile(ast.Expression(test), "<test>", "eval"), {"sys": sys})
            for child in node.body if taken else node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names += [alias.name for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.names.append(node.module)


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under folder, outside the stdlib: module -> files."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        imports = _Imports()
        imports.visit(ast.parse(path.read_text(), str(path)))
        for name in imports.names:
            top = name.partition(".")[0]
            if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"])
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports(ROOT / "platform" / "nbcloud")
    for module, files in _third_party_imports(ROOT / "workers").items():
        imports.setdefault(module, set()).update(files)
    assert {"django", "celery", "cryptography", "prometheus_client"} <= imports.keys()
    undeclared = {
        module: sorted(files)
        for module, files in imports.items()
        if not _declared(providers.get(module, [module])) & declared
    }
    assert undeclared == {}, "declare these in pyproject.toml's [project] dependencies"


def test_the_test_extras_are_not_needed_to_run():
    """The extras add test tools only: nothing a runtime import needs is only there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    only_in_tests = _declared(project["optional-dependencies"]["test"]) - _declared(
        project["dependencies"]
    )
    providers = importlib.metadata.packages_distributions()
    imported = set(_third_party_imports(ROOT / "platform" / "nbcloud")) | set(
        _third_party_imports(ROOT / "workers")
    )
    needed = {d for module in imported for d in _declared(providers.get(module, [module]))}
    assert needed & only_in_tests == set()


@pytest.fixture(scope="module")
def check_imports():
    return load_script("check_imports")


def test_the_import_check_names_each_module_that_fails(check_imports, tmp_path, monkeypatch):
    package = tmp_path / "shipped"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("import json\n")
    (package / "needs_extra.py").write_text("import no_such_dependency_here\n")
    (package / "inner" / "__init__.py").write_text("")
    (package / "inner" / "broken.py").write_text("raise RuntimeError('at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    found, failures = check_imports.import_all(["shipped"])

    assert set(found) == {
        "shipped",
        "shipped.fine",
        "shipped.needs_extra",
        "shipped.inner",
        "shipped.inner.broken",
    }
    assert sorted(failures) == ["shipped.inner.broken", "shipped.needs_extra"]
    assert "No module named 'no_such_dependency_here'" in failures["shipped.needs_extra"]
    assert "RuntimeError: at import" in failures["shipped.inner.broken"]


def test_every_module_of_the_project_imports(tmp_path):
    """The check as CI runs it (here with the test extras: .ci/plain-install.sh without)."""
    done = subprocess.run(
        [sys.executable, "scripts/check_imports.py"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": "platform:.",
            "NBCLOUD_DATA_DIR": str(tmp_path / "data"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    count = int(re.search(r"imported all (\d+) modules", done.stdout)[1])
    assert count > 100
