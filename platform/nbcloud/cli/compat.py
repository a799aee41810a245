"""What `nbc` takes from Python 3.11 when it runs on 3.9 or 3.10 (cli/pyproject.toml):
the same names, from the standard library where it has them."""

import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum  # novermin: this branch runs on 3.11 and later only

    import tomllib
else:
    from enum import Enum

    import tomli as tomllib  # the standard library's tomllib, before 3.11

    class StrEnum(str, Enum):
        """enum.StrEnum: members are strings, and str() of one is its value."""

        def __str__(self) -> str:
            return str(self.value)


__all__ = ("StrEnum", "tomllib")
