"""Parsing and checking the parts of a notebook spec that are strings.

Volumes follow OVH's `--volume` syntax:
  object storage: container@alias[/prefix]:/mount/path[:RO|RW|RWD][:cache]
  git:            https://host/owner/repo.git[@branch]:/mount/path[:RO|RW]
                  (also http://, git:// and ssh://[user@]host[:port]/path.git)
Labels and selectors follow Kubernetes' syntax for keys and values.
"""

import re
from posixpath import normpath

from django.core.exceptions import ValidationError
from django.db.models import Q
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact, IsNull

from .volumes import GitVolume, ObjectVolume, Volume

PLATFORM_LABEL_PREFIX = "nbcloud/"
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables that change how programs are found and loaded, or that the platform
# sets itself: a notebook's owner may not set them (the editor's own launch, its
# secret and the workspace's pip/conda layout depend on them).
RESERVED_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "IFS",
        "ENV",
        "BASH_ENV",
        "CDPATH",
        "GLOBIGNORE",
        "PS4",
        "SHELLOPTS",
        "BASHOPTS",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PIP_USER",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYLIB",
        "RUBYOPT",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "MALLOC_CHECK_",
        "HASHED_PASSWORD",
        "PASSWORD",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
    }
)
RESERVED_ENV_PREFIXES = (
    "LD_",
    "DYLD_",
    "PYTHON",
    "BASH_FUNC_",
    "JUPYTER",
    "JPY_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "NBCLOUD_",
    "CODE_SERVER",
    "VSCODE_",
    "GLIBC_",
    "MALLOC_",
    "CONDA",
)
# Paths a volume may not hide: the system, and the platform's own mounts.
SYSTEM_PATHS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
    "/tmp",
    "/opt",
    "/run",
    "/home",
)
WORKSPACE = "/workspace"
GIT_URL = re.compile(
    r"^(?P<url>(?:(?:https?|git)://|ssh://(?:[A-Za-z0-9._-]+@)?)[^\s@:/]+(?::\d+)?/[^\s@:]+?\.git)"
    r"(?:@(?P<branch>[^\s:]+))?"
    r":(?P<mount>/[^:]*)(?::(?P<perm>[A-Za-z]+))?$"
)
OBJECT_VOLUME = re.compile(
    r"^(?P<container>[^@:/\s]+)@(?P<alias>[A-Za-z0-9][-A-Za-z0-9_.]*)(?:/(?P<prefix>[^:\s]*))?"
    r":(?P<mount>/[^:]*)(?::(?P<perm>[A-Za-z]+))?(?::(?P<cache>cache))?$"
)
VOLUME_HELP = (
    "use container@alias[/prefix]:/mount/path[:RO|RW|RWD][:cache] or "
    "https://host/repo.git[@branch]:/mount/path[:RO|RW]"
)


def check_env_name(name: str) -> str:
    """An env var name the owner may set, or a ValidationError naming it and why not."""
    if not ENV_NAME.match(name):
        raise ValidationError(
            f"env var {name!r}: must be a shell variable name: letters, digits and _, "
            "not starting with a digit"
        )
    upper = name.upper()
    if upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES):
        raise ValidationError(
            f"env var {name!r} is reserved: it changes how programs are found or loaded, "
            "or the platform sets it. Choose another name (for example MY_{name})."
        )
    return name


def check_label_key(key: str) -> None:
    if not LABEL_KEY.match(key):
        raise ValidationError(
            f"label key {key!r} is invalid: use letters, digits, '-', '_' and '.', "
            "at most 63 characters, optionally after a DNS prefix and '/'"
        )


def check_label_value(key: str, value: str) -> None:
    if not isinstance(value, str) or not LABEL_VALUE.match(value):
        raise ValidationError(
            f"label {key!r} has invalid value {value!r}: use at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )


def check_labels(labels: dict, *, allow_platform: bool = False) -> dict:
    if not isinstance(labels, dict):
        raise ValidationError("labels must be an object of key: value strings")
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(key, value)
        if key.startswith(PLATFORM_LABEL_PREFIX) and not allow_platform:
            raise ValidationError(
                f"label {key!r}: keys starting {PLATFORM_LABEL_PREFIX!r} are reserved"
            )
    return labels


def parse_label_selector(selector: str) -> list[tuple[str, str, str]]:
    """'k=v,k2!=v2' -> [(k, '=', v), (k2, '!=', v2)]."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        match = re.match(r"^([^=!\s]+)\s*(==|=|!=)\s*(\S*)$", term)
        if not match:
            raise ValidationError(
                f"label selector term {term!r} is invalid: use key=value or key!=value, "
                "separated by commas"
            )
        key, op, value = match.groups()
        check_label_key(key)
        check_label_value(key, value)
        terms.append((key, "!=" if op == "!=" else "=", value))
    return terms


def labels_match(labels: dict, terms: list[tuple[str, str, str]]) -> bool:
    return all((labels.get(k) == v) == (op == "=") for k, op, v in terms)


def filter_by_labels(queryset, terms: list[tuple[str, str, str]]):
    """The rows of `queryset` whose labels match `terms`, as `labels_match` says, in
    SQL: a missing key matches `!=` (its value is NULL), so a project of 100,000
    notebooks is not read into Python to list a page."""
    for key, op, value in terms:
        label = KeyTextTransform(key, "labels")
        if op == "=":
            queryset = queryset.filter(Exact(label, value))
        else:
            queryset = queryset.filter(Q(IsNull(label, True)) | ~Q(Exact(label, value)))
    return queryset


def _check_mount(mount: str) -> str:
    clean = normpath(mount)
    if not mount.startswith("/") or clean != mount.rstrip("/") and mount != "/":
        raise ValidationError(f"mount path {mount!r} must be absolute and normalised")
    if clean == WORKSPACE:
        raise ValidationError(f"mount path {mount!r} is the workspace itself: mount below it")
    if any(clean == p or (p != "/" and clean.startswith(p + "/")) for p in SYSTEM_PATHS):
        raise ValidationError(f"mount path {mount!r} is a system path: use e.g. /workspace/data")
    if not clean.startswith(WORKSPACE + "/"):
        raise ValidationError(
            f"mount path {mount!r} is outside the workspace: volumes are mounted below "
            "/workspace, e.g. /workspace/data"
        )
    return clean


def parse_volume(raw) -> Volume:
    """A volume string (or its object form) -> its value, checked and normalised."""
    if isinstance(raw, dict):
        raw = raw.get("spec") or _object_volume_to_string(raw)
    if not isinstance(raw, str):
        raise ValidationError(f"volume {raw!r} is neither a string nor an object; {VOLUME_HELP}")
    if "\x00" in raw:
        # No path, URL or bucket name holds one, and PostgreSQL cannot store it.
        raise ValidationError(f"volume {raw!r} contains a NUL character; {VOLUME_HELP}")
    if match := GIT_URL.match(raw):
        perm = (match["perm"] or "RO").upper()
        if perm not in ("RO", "RW"):
            raise ValidationError(f"volume {raw!r}: git volumes are RO or RW, not {perm}")
        return GitVolume(
            url=match["url"],
            branch=match["branch"] or "",
            mount_path=_check_mount(match["mount"]),
            permission=perm,
            spec=raw,
        )
    if match := OBJECT_VOLUME.match(raw):
        perm = (match["perm"] or "RO").upper()
        if perm not in ("RO", "RW", "RWD"):
            raise ValidationError(f"volume {raw!r}: permission must be RO, RW or RWD, not {perm}")
        return ObjectVolume(
            container=match["container"],
            alias=match["alias"],
            prefix=match["prefix"] or "",
            mount_path=_check_mount(match["mount"]),
            permission=perm,
            cache=bool(match["cache"]),
            spec=raw,
        )
    raise ValidationError(f"volume {raw!r} is malformed: {VOLUME_HELP}")


def _object_volume_to_string(obj: dict) -> str:
    mount = obj.get("mount_path", "")
    perm = obj.get("permission", "RO")
    if "url" in obj:
        branch = f"@{obj['branch']}" if obj.get("branch") else ""
        return f"{obj['url']}{branch}:{mount}:{perm}"
    prefix = f"/{obj['prefix']}" if obj.get("prefix") else ""
    cache = ":cache" if obj.get("cache") else ""
    return f"{obj.get('container', '')}@{obj.get('alias', '')}{prefix}:{mount}:{perm}{cache}"


def check_volume_set(volumes: list[Volume]) -> None:
    mounts = sorted(v.mount_path for v in volumes)
    for a, b in zip(mounts, mounts[1:], strict=False):
        if a == b:
            raise ValidationError(f"two volumes are mounted at {a}: mount paths must be unique")
        if b.startswith(a + "/"):
            raise ValidationError(f"volume mounted at {b} is nested in the one at {a}")
