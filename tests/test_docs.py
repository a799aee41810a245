"""The reference pages stay true to the code they describe."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_is_in_the_settings_page():
    """docs/settings.md lists every variable settings.py reads."""
    source = (ROOT / "platform" / "nbcloud" / "settings.py").read_text()
    names = set(
        re.findall(r'env(?:str|int|bool|float|path|choice|networks)\(\s*"([A-Z0-9_]+)"', source)
    )
    assert len(names) > 40
    page = (ROOT / "docs" / "settings.md").read_text()
    assert sorted(name for name in names if f"`{name}`" not in page) == []


def test_the_readme_links_lead_somewhere():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)", readme)
    assert "docs/settings.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []
