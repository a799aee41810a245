"""The reference pages stay true to the code they describe."""

import re
from pathlib import Path

from django.conf import global_settings

import nbcloud.settings

ROOT = Path(__file__).resolve().parent.parent


# Where the code reads settings (the tests set theirs through pytest-django).
CODE = ("platform", "workers", "scripts", "bench", "manage.py")


def _sources():
    for place in CODE:
        path = ROOT / place
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _settings_table() -> set[str]:
    """The variables named in the first column of docs/settings.md's one table."""
    page = (ROOT / "docs" / "settings.md").read_text()
    tables = re.findall(r"(?:^\|.*\|\n)+", page, re.MULTILINE)
    assert len(tables) == 1, "docs/settings.md keeps every setting in ONE table"
    rows = tables[0].splitlines()[2:]  # below the header and its rule
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def test_every_variable_settings_py_reads_is_in_the_settings_table():
    source = (ROOT / "platform" / "nbcloud" / "settings.py").read_text()
    names = set(re.findall(r'\benv[a-z]*\(\s*"([A-Z0-9_]+)"', source))
    assert len(names) > 40
    assert {"SECRET_KEY", "DATABASE_URL", "NBCLOUD_ENV_PYTHON", "NBCLOUD_CODE_SERVER"} <= names
    assert sorted(names - _settings_table()) == []


def test_the_settings_module_reads_nothing_but_through_its_readers():
    """No os.environ or os.getenv behind the readers' backs (they name bad values)."""
    source = (ROOT / "platform" / "nbcloud" / "settings.py").read_text()
    assert re.findall(r"os\.environ|getenv", source) == []


def test_every_setting_the_code_reads_exists():
    """`settings.X` in the code is a setting of settings.py (or one of Django's own
    defaults), never one read with a fallback that settings.py does not define."""
    defined = set(vars(nbcloud.settings)) | set(vars(global_settings))
    read, fallbacks = {}, []
    for path in _sources():
        text = path.read_text()
        for name in re.findall(r"\bsettings\.([A-Z][A-Z0-9_]*)\b", text):
            read.setdefault(name, str(path.relative_to(ROOT)))
        fallbacks += [
            str(path.relative_to(ROOT)) for _ in re.findall(r"getattr\(\s*settings\b", text)
        ]
    assert len(read) > 50
    assert {n: where for n, where in read.items() if n not in defined} == {}
    assert fallbacks == [], "read settings as settings.X, defined in settings.py"


def test_every_nbcloud_setting_is_in_the_settings_table():
    """Each NBCLOUD_* setting of settings.py is documented under its own name."""
    names = {name for name in vars(nbcloud.settings) if name.startswith("NBCLOUD_")}
    assert len(names) > 40
    assert sorted(names - _settings_table()) == []


def test_the_readme_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)", readme)
    assert "docs/settings.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []
