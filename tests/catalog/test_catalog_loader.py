"""The environment catalogue in environments/ and its loader."""

from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured
from packaging.requirements import Requirement

from nbcloud.catalog.services import load_catalog

ENVIRONMENTS = Path(__file__).resolve().parents[2] / "environments"
OVH_FRAMEWORKS = {
    "conda",
    "pytorch",
    "tensorflow",
    "huggingface",
    "fastai",
    "mxnet",
    "autogluon-mxnet",
    "one-for-all",
}


def write_catalogue(root: Path, frameworks: dict[str, dict], editors=None) -> Path:
    """A small catalogue: frameworks maps id -> {"editors": [...], "requirements": [...]}."""
    editors = editors or {"jupyterlab": []}
    root.mkdir(parents=True, exist_ok=True)
    (root / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "editors": [
                    {"id": e, "name": e, "requirements": reqs} for e, reqs in editors.items()
                ],
                "flavors": [
                    {
                        "id": "cpu",
                        "type": "cpu",
                        "cpus": 1,
                        "memory_gib": 1,
                        "storage_gib": 1,
                        "max": 1,
                        "default": True,
                    }
                ],
                "regions": [{"id": "GRA", "name": "Gravelines", "default": True}],
            }
        )
    )
    for fw_id, fw in frameworks.items():
        folder = root / fw_id
        folder.mkdir()
        (folder / "manifest.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": fw_id,
                    "name": fw_id,
                    "editors": fw.get("editors", ["jupyterlab"]),
                    "versions": [{"version": "1", "default": True}],
                }
            )
        )
        (folder / "requirements.txt").write_text(
            "".join(r + "\n" for r in fw.get("requirements", []))
        )
    return root


@pytest.fixture(scope="module")
def real():
    return load_catalog(ENVIRONMENTS)


def test_the_ovh_frameworks_are_all_present(real):
    assert set(real.frameworks) >= OVH_FRAMEWORKS


def test_the_base_image_folder_is_not_a_framework(real):
    assert (ENVIRONMENTS / "base" / "Dockerfile").exists()
    assert not (ENVIRONMENTS / "base" / "manifest.yaml").exists()
    assert "base" not in real.frameworks


@pytest.mark.parametrize("framework_id", sorted(OVH_FRAMEWORKS))
def test_every_framework_loads_with_versions_and_known_editors(real, framework_id):
    fw = real.frameworks[framework_id]
    assert fw.path == ENVIRONMENTS / framework_id
    assert fw.name and fw.description and fw.doc_url.startswith("https://")
    assert fw.versions, "at least one version"
    assert sum(v.default for v in fw.versions) == 1, "exactly one default version"
    assert len({v.version for v in fw.versions}) == len(fw.versions)
    assert fw.editors and set(fw.editors) <= set(real.editors)
    assert set(fw.editors) == {"jupyterlab", "vscode"}
    for v in fw.versions:
        assert v.python == "3.11", "the base image has Python 3.11"
        assert v.image == f"nbcloud/{fw.id}:{v.version}"


def test_requirements_are_version_ranged_pep508(real):
    for fw in real.frameworks.values():
        for v in fw.versions:
            for line in v.requirements:
                req = Requirement(line)
                assert req.specifier, f"{fw.id} {v.version}: {line} has no version range"
                ops = {s.operator for s in req.specifier}
                assert ops & {"<", "<=", "=="}, f"{fw.id} {v.version}: {line} has no upper bound"
    assert any(
        Requirement(r).name == "torch"
        for r in real.frameworks["pytorch"].default_version.requirements
    )


def test_editors_come_with_their_packages(real):
    assert any(r.startswith("jupyterlab") for r in real.editors["jupyterlab"].requirements)
    assert all(
        any(r.startswith("ipykernel") for r in e.requirements) for e in real.editors.values()
    )


def test_the_dockerfile_template_covers_every_environment():
    template = (ENVIRONMENTS / "Dockerfile").read_text()
    assert "ARG BASE=nbcloud/base:latest\nFROM ${BASE} AS build" in template
    for needle in (
        "--system-site-packages /opt/env",
        "PIP_USER=1",
        "PYTHONUSERBASE=/workspace/.local",
        "USER nbuser",
        "WORKDIR /workspace",
        "--no-index --find-links /tmp/wheels",  # no network inside the build
        "COPY --from=build /opt/env /opt/env",  # the wheels stay behind
    ):
        assert needle in template
    base = (ENVIRONMENTS / "base" / "build-base.sh").read_text()
    assert "debootstrap --variant=minbase" in base and "docker import -" in base


def test_loader_rejects_a_manifest_naming_an_unknown_editor(tmp_path):
    root = write_catalogue(tmp_path, {"tiny": {"editors": ["jupyterlab", "emacs"]}})
    with pytest.raises(ImproperlyConfigured, match="emacs"):
        load_catalog(root)


def test_loader_rejects_a_missing_requirements_file(tmp_path):
    root = write_catalogue(tmp_path, {"tiny": {}})
    (root / "tiny" / "requirements.txt").unlink()
    with pytest.raises(ImproperlyConfigured, match="tiny"):
        load_catalog(root)


def test_a_small_catalogue_loads(tmp_path):
    root = write_catalogue(tmp_path, {"tiny": {"requirements": ["six>=1,<2"]}})
    cat = load_catalog(root)
    assert list(cat.frameworks) == ["tiny"]
    assert cat.frameworks["tiny"].get_version(None).requirements == ("six>=1,<2",)
    assert cat.frameworks["tiny"].get_version("2") is None


def test_the_h200_flavor_scales_the_h100_share_by_gpu_memory(real):
    h100, h200 = real.flavors["h100-1-gpu"], real.flavors["h200-1-gpu"]
    assert (h200.type, h200.gpu_model, h200.gpu_memory_gib, h200.max) == ("gpu", "H200", 141, 4)
    ratio = h200.gpu_memory_gib / h100.gpu_memory_gib
    assert h200.memory_gib == int(h100.memory_gib * ratio)
    assert h200.storage_gib == int(h100.storage_gib * ratio)
    assert h200.cpus == h100.cpus
    four = h200.resources(4)
    assert (four.cpus, four.memory_bytes, four.disk_bytes) == (
        4 * h200.cpus,
        4 * h200.memory_gib * 1024**3,
        4 * h200.storage_gib * 1024**3,
    )
