"""The catalogue: frameworks, editors, flavors and regions, read from environments/.

Each framework is a folder `environments/<id>/` holding `manifest.yaml`, a
Dockerfile and its requirements; editors, flavors and regions are in
`environments/catalog.yaml`. The catalogue is data, read once per process.
"""

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

GIB = 1024**3


@dataclass(frozen=True)
class FrameworkVersion:
    version: str
    requirements: tuple[str, ...]
    image: str
    python: str = "3.11"
    default: bool = False


@dataclass(frozen=True)
class Framework:
    id: str
    name: str
    description: str
    doc_url: str
    editors: tuple[str, ...]
    versions: tuple[FrameworkVersion, ...]
    path: Path
    # Whether the environment carries a conda installer (micromamba, from
    # NBCLOUD_CONDA_INSTALLER) besides pip.
    conda: bool = False

    @property
    def smoke(self) -> Path | None:
        """The smoke program (`smoke.py` in the folder) `make verify-envs` runs in a notebook."""
        path = self.path / "smoke.py"
        return path if path.is_file() else None

    @property
    def default_version(self) -> FrameworkVersion:
        return next((v for v in self.versions if v.default), self.versions[0])

    def get_version(self, version: str | None) -> FrameworkVersion | None:
        if not version:
            return self.default_version
        return next((v for v in self.versions if v.version == version), None)


@dataclass(frozen=True)
class Editor:
    id: str
    name: str
    doc_url: str
    requirements: tuple[str, ...]


@dataclass(frozen=True)
class Flavor:
    id: str
    type: str  # "gpu" or "cpu": what one unit is
    cpus: int
    memory_gib: int
    storage_gib: int
    max: int
    default: bool = False
    gpu_model: str = ""
    gpu_memory_gib: int = 0
    # Default price of one unit for one minute, in settings.NBCLOUD_CURRENCY;
    # a string so it is read as an exact Decimal.
    price_per_minute: str = "0"

    def resources(self, units: int) -> "Resources":
        """What `units` of this flavor get: memory, CPUs and storage scale linearly."""
        return Resources(
            cpus=self.cpus * units,
            memory_bytes=self.memory_gib * GIB * units,
            disk_bytes=self.storage_gib * GIB * units,
        )


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory_bytes: int
    disk_bytes: int


@dataclass(frozen=True)
class Region:
    id: str
    name: str
    default: bool = False


@dataclass(frozen=True)
class Catalog:
    frameworks: dict[str, Framework]
    editors: dict[str, Editor]
    flavors: dict[str, Flavor]
    regions: dict[str, Region]
    source: Path = field(compare=False)

    def default_flavor(self, unit_type: str) -> Flavor:
        candidates = [f for f in self.flavors.values() if f.type == unit_type]
        return next((f for f in candidates if f.default), candidates[0])

    @property
    def default_region(self) -> Region:
        configured = self.regions.get(settings.NBCLOUD_DEFAULT_REGION)
        return configured or next((r for r in self.regions.values() if r.default), None)


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ImproperlyConfigured(f"cannot read catalogue file {path}: {exc}") from exc


def _framework(folder: Path) -> Framework:
    manifest = _read_yaml(folder / "manifest.yaml")
    try:
        versions = []
        for v in manifest["versions"]:
            requirements_file = folder / v.get("requirements", "requirements.txt")
            requirements = tuple(
                line.strip()
                for line in requirements_file.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            )
            versions.append(
                FrameworkVersion(
                    version=str(v["version"]),
                    requirements=requirements,
                    image=v.get("image", f"nbcloud/{manifest['id']}:{v['version']}"),
                    python=str(v.get("python", "3.11")),
                    default=bool(v.get("default", False)),
                )
            )
        return Framework(
            id=manifest["id"],
            name=manifest["name"],
            description=manifest.get("description", ""),
            doc_url=manifest.get("doc_url", ""),
            editors=tuple(manifest["editors"]),
            versions=tuple(versions),
            path=folder,
            conda=bool(manifest.get("conda", False)),
        )
    except (KeyError, TypeError, OSError) as exc:
        raise ImproperlyConfigured(f"invalid manifest in {folder}: {exc!r}") from exc


def load_catalog(root: Path) -> Catalog:
    data = _read_yaml(root / "catalog.yaml")
    frameworks = {
        fw.id: fw
        for fw in (_framework(p) for p in sorted(root.iterdir()) if (p / "manifest.yaml").exists())
    }
    editors = {
        e["id"]: Editor(
            id=e["id"],
            name=e["name"],
            doc_url=e.get("doc_url", ""),
            requirements=tuple(e.get("requirements", ())),
        )
        for e in data.get("editors", [])
    }
    flavors = {
        f["id"]: Flavor(**{**f, "price_per_minute": str(f.get("price_per_minute", "0"))})
        for f in data.get("flavors", [])
    }
    regions = {r["id"]: Region(**r) for r in data.get("regions", [])}
    for fw in frameworks.values():
        unknown = set(fw.editors) - set(editors)
        if unknown:
            raise ImproperlyConfigured(f"framework {fw.id} names unknown editors {sorted(unknown)}")
    if not (frameworks and editors and flavors and regions):
        raise ImproperlyConfigured(
            f"the catalogue in {root} needs frameworks, editors, flavors and regions"
        )
    return Catalog(frameworks, editors, flavors, regions, source=root)


@cache
def catalog() -> Catalog:
    return load_catalog(settings.NBCLOUD_ENVIRONMENTS_DIR)
