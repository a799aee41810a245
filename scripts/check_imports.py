"""Import every module of the project, Django set up with its settings first.

    python scripts/check_imports.py [PACKAGE ...]      (default: nbcloud workers)

Run by .ci/plain-install.sh in a virtualenv holding the project without its
test extras (`pip install -e .`): a module importing something that only the
test extras (or a dependency's dependency) bring in fails here, naming the
module and what it missed. No module is excused. Exits 1 when any fails.

The data directory is a temporary one unless NBCLOUD_DATA_DIR is set, so the
entry points that prepare it (nbcloud.asgi, nbcloud.wsgi) leave nothing behind.
"""

import importlib
import os
import pkgutil
import sys
import tempfile
import traceback

PACKAGES = ("nbcloud", "workers")


def module_names(package: str, failures: dict[str, str]) -> list[str]:
    """The package and every module under it (a subpackage that fails to import is a failure)."""
    root = importlib.import_module(package)
    names = [package]

    def failed(name: str) -> None:
        failures[name] = traceback.format_exc(limit=-1).strip()

    for info in pkgutil.walk_packages(root.__path__, f"{package}.", onerror=failed):
        names.append(info.name)
    return names


def import_all(
    packages: tuple[str, ...] | list[str] = PACKAGES,
) -> tuple[list[str], dict[str, str]]:
    """The modules found, and each that failed to import with its traceback."""
    found: list[str] = []
    failures: dict[str, str] = {}
    for package in packages:
        try:
            names = module_names(package, failures)
        except Exception:
            failures[package] = traceback.format_exc(limit=-1).strip()
            continue
        found.extend(names)
        for name in names:
            if name in failures:
                continue
            try:
                importlib.import_module(name)
            except Exception:
                failures[name] = traceback.format_exc(limit=-1).strip()
    return found, failures


def main(argv: list[str]) -> int:
    packages = argv or list(PACKAGES)
    with tempfile.TemporaryDirectory(prefix="nbcloud-imports-") as data_dir:
        os.environ.setdefault("NBCLOUD_DATA_DIR", data_dir)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
        import django

        django.setup()
        found, failures = import_all(packages)
    for name, error in sorted(failures.items()):
        print(f"{name}: {error.splitlines()[-1]}", file=sys.stderr)
    if failures:
        print(
            f"{len(failures)} module(s) failed to import: declare what they import in "
            "pyproject.toml's [project] dependencies",
            file=sys.stderr,
        )
        return 1
    print(f"imported all {len(found)} modules of {', '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
