"""The docker runtime's environment images, built with no registry and no network.

One image per framework version, tagged as its manifest says (`nbcloud/conda:py311`),
from the one template `environments/Dockerfile` on the base image
(`NBCLOUD_DOCKER_BASE_IMAGE`, made by `environments/base/build-base.sh`).

`pip download` on this host fills a wheelhouse with every requirement (the version's
and its editors') as wheels for the image's Python (CPython 3.11 on Debian bookworm's
glibc), whatever this host runs; the template installs them with `--no-index` from
the build context, and the build runs with `network_mode=none`. A multi-stage build
keeps the wheels out of the final image.

Why not mount the host's virtualenv (workers/environments.py) into a container: a
venv made with `--system-site-packages` lets pip skip what the host's Debian packages
already provide (PyYAML, Pygments, ...), which the image does not have.

An environment whose manifest says `conda: true` gets micromamba in its image as in
its virtualenv (workers/environments.py, from `NBCLOUD_CONDA_INSTALLER`, fetched on
this host): the build context's `overlay/` holds `libexec/micromamba`, the channels
file and the `bin/micromamba` launcher, which the template copies over the image's
venv (`/opt/env`); the root prefix is `$HOME/.micromamba`, in the workspace.

The image's label `io.nbcloud.build-key` is a digest of everything that went in (the
template, the requirements, the Python, the base image's id, micromamba's source and
channels): a build is skipped while the image carries the current key.
"""

import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
from django.conf import settings

from workers import environments

BUILD_KEY_LABEL = "io.nbcloud.build-key"
ENVIRONMENT_LABEL = "io.nbcloud.environment"
# Debian bookworm's glibc: the newest manylinux wheels the image's Python can load.
GLIBC_MINOR = 36
# Where the template puts the environment's venv in the image.
IMAGE_PREFIX = Path("/opt/env")


class ImageBuildError(RuntimeError):
    """An environment image could not be built (no base image, no wheel, build failed)."""


def client() -> docker.DockerClient:
    return docker.from_env(timeout=600)


def template() -> Path:
    return Path(settings.NBCLOUD_ENVIRONMENTS_DIR) / "Dockerfile"


def _base_id(api: docker.DockerClient) -> str:
    base = settings.NBCLOUD_DOCKER_BASE_IMAGE
    try:
        return api.images.get(base).id
    except docker.errors.ImageNotFound:
        raise ImageBuildError(
            f"the base image {base} is not on this host; build it first: "
            "sudo environments/base/build-base.sh (or make docker-images)"
        ) from None


def build_key(reqs: tuple[str, ...], python: str, base_id: str, conda: list | None = None) -> str:
    """A digest of everything that goes into an environment's image."""
    payload = {
        "template": template().read_text(),
        "requirements": list(reqs),
        "python": python,
        "base": base_id,
    }
    if conda is not None:
        payload["conda"] = conda
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _built_key(api: docker.DockerClient, image: str) -> str | None:
    try:
        return (api.images.get(image).labels or {}).get(BUILD_KEY_LABEL)
    except docker.errors.ImageNotFound:
        return None


def _wheel_platforms() -> list[str]:
    """Every manylinux tag the image's glibc accepts (pip does not infer older ones)."""
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def download_wheels(
    reqs: tuple[str, ...], python: str, dest: Path, log: Callable[[str], object]
) -> None:
    """Fill dest with wheels of reqs and their dependencies for the image's Python."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        *(arg for tag in _wheel_platforms() for arg in ("--platform", tag)),
        "--dest",
        str(dest),
        *reqs,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ImageBuildError(
            f"downloading the wheels failed (a requirement without a wheel for CPython "
            f"{python} on manylinux x86_64/glibc 2.{GLIBC_MINOR} cannot go into an image "
            f"built without network):\n{tail}"
        )
    log(f"  {len(list(dest.glob('*.whl')))} wheels")


def build(
    framework_id: str,
    version: str | None = None,
    *,
    force: bool = False,
    log: Callable[[str], object] = print,
) -> str:
    """Build the environment's image unless it is up to date (or force); return its name."""
    framework, found = environments.resolve(framework_id, version)
    environment = f"{framework.id}:{found.version}"
    reqs = environments.requirements(framework.id, found.version)
    api = client()
    key = build_key(reqs, found.python, _base_id(api), environments.conda_source(framework))
    image = found.image
    if not force and _built_key(api, image) == key:
        log(f"{environment}: {image} is up to date")
        return image
    with tempfile.TemporaryDirectory(prefix="nbcloud-image-") as tmp:
        context = Path(tmp)
        shutil.copy(template(), context / "Dockerfile")
        (context / "requirements.txt").write_text("\n".join(reqs) + "\n")
        (context / "wheels").mkdir()
        if reqs:  # pip download refuses an empty list
            log(f"{environment}: downloading {len(reqs)} requirements as wheels")
            download_wheels(reqs, found.python, context / "wheels", log)
        (context / "overlay").mkdir()
        if framework.conda:
            environments.install_micromamba(environment, context / "overlay", IMAGE_PREFIX, log)
        log(f"{environment}: building {image} on {settings.NBCLOUD_DOCKER_BASE_IMAGE}")
        try:
            api.images.build(
                path=str(context),
                tag=image,
                buildargs={"BASE": settings.NBCLOUD_DOCKER_BASE_IMAGE},
                labels={BUILD_KEY_LABEL: key, ENVIRONMENT_LABEL: environment},
                network_mode="none",
                rm=True,
                forcerm=True,
                nocache=force,  # a forced build starts over, not from cached layers
            )
        except docker.errors.BuildError as exc:
            tail = "".join(str(chunk.get("stream", chunk)) for chunk in list(exc.build_log)[-15:])
            raise ImageBuildError(f"building {image} failed: {exc.msg}\n{tail}") from exc
    log(f"{environment}: built {image}")
    return image
