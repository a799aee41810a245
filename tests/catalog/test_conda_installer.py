"""micromamba in environments whose manifest says `conda: true` (workers/environments.py).

No conda distribution can be downloaded on these machines, so these tests prove the
plumbing with a real executable standing in for micromamba: GNU coreutils' `env`,
which answers `--version` like micromamba does and, run with no arguments, prints the
environment the `bin/micromamba` launcher gives it (root prefix, channels file). What
they prove: the installer's source is a local file or a URL, an archive or a bare
executable; anything else is refused naming the setting; the channels are
configurable; the root prefix is under $HOME (the workspace, which survives stop and
start). What they cannot prove here: a real micromamba solving and installing from a
real channel (environments/README.md says so).
"""

import contextlib
import http.server
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import docker
import pytest
import yaml

from nbcloud.catalog.services import catalog
from workers.environments import EnvironmentBuildError, build, build_info, is_built

STAND_IN = Path(shutil.which("env") or "/usr/bin/env")


@pytest.fixture
def conda_catalogue(settings, tmp_path):
    """A catalogue with one framework, `conda`, that asks for micromamba."""
    root = tmp_path / "catalogue"
    (root / "conda").mkdir(parents=True)
    (root / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "editors": [{"id": "jupyterlab", "name": "J", "requirements": []}],
                "flavors": [
                    {"id": "cpu", "type": "cpu", "cpus": 1, "memory_gib": 1}
                    | {"storage_gib": 1, "max": 1}
                ],
                "regions": [{"id": "GRA", "name": "Gravelines"}],
            }
        )
    )
    (root / "conda" / "manifest.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "conda",
                "name": "Conda",
                "editors": ["jupyterlab"],
                "conda": True,
                "versions": [{"version": "1", "default": True}],
            }
        )
    )
    (root / "conda" / "requirements.txt").write_text("")
    settings.NBCLOUD_ENVIRONMENTS_DIR = root
    settings.NBCLOUD_ENVS_DIR = tmp_path / "envs"
    settings.NBCLOUD_CONDA_CHANNELS = "conda-forge"
    catalog.cache_clear()
    yield settings
    catalog.cache_clear()


def micromamba_archive(path: Path) -> Path:
    """A tar.bz2 laid out like micromamba's own (bin/micromamba), holding the stand-in."""
    with tarfile.open(path, "w:bz2") as archive:
        archive.add(STAND_IN, arcname="bin/micromamba")
        archive.add(STAND_IN, arcname="info/not-this-one")
    return path


def test_without_an_installer_the_environment_is_pip_only_and_the_build_says_so(
    conda_catalogue,
):
    conda_catalogue.NBCLOUD_CONDA_INSTALLER = ""
    logged = []
    path = build("conda", log=logged.append)
    assert not (path / "bin" / "micromamba").exists()
    assert any("NBCLOUD_CONDA_INSTALLER is empty" in line for line in logged), logged
    assert build_info("conda", "1")["seconds"] >= 0


def test_micromamba_from_a_local_archive_uses_the_channels_and_a_root_under_home(
    conda_catalogue, tmp_path
):
    conda_catalogue.NBCLOUD_CONDA_INSTALLER = str(micromamba_archive(tmp_path / "mm.tar.bz2"))
    conda_catalogue.NBCLOUD_CONDA_CHANNELS = "conda-forge, bioconda"
    path = build("conda", log=lambda _: None)

    launcher = path / "bin" / "micromamba"
    assert launcher.stat().st_mode & 0o755 == 0o755
    assert (path / "libexec" / "micromamba").read_bytes() == STAND_IN.read_bytes()
    condarc = yaml.safe_load((path / "etc" / "conda" / "condarc").read_text())
    assert condarc["channels"] == ["conda-forge", "bioconda"]

    home = tmp_path / "workspace"
    seen = subprocess.run(
        [launcher], env={"HOME": str(home)}, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert f"MAMBA_ROOT_PREFIX={home}/.micromamba" in seen
    assert f"CONDARC={path}/etc/conda/condarc" in seen
    # A user's own choices win over the platform's defaults.
    mine = subprocess.run(
        [launcher],
        env={"HOME": str(home), "MAMBA_ROOT_PREFIX": "/elsewhere", "CONDARC": "/my/rc"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "MAMBA_ROOT_PREFIX=/elsewhere" in mine and "CONDARC=/my/rc" in mine

    # Other channels are another build.
    assert is_built("conda", "1")
    conda_catalogue.NBCLOUD_CONDA_CHANNELS = "conda-forge"
    assert not is_built("conda", "1")


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_micromamba_from_a_url_as_a_bare_executable(conda_catalogue, served):
    www, url = served
    shutil.copy(STAND_IN, www / "micromamba-linux-64")
    conda_catalogue.NBCLOUD_CONDA_INSTALLER = f"{url}/micromamba-linux-64"
    logged = []
    path = build("conda", log=logged.append)
    assert (path / "libexec" / "micromamba").read_bytes() == STAND_IN.read_bytes()
    assert any("micromamba env (GNU coreutils)" in line for line in logged), logged


def test_a_source_that_is_not_micromamba_is_refused_naming_the_setting(
    conda_catalogue, served, tmp_path
):
    www, url = served
    (www / "page.html").write_text("<html>not a binary</html>")
    for source, words in (
        (f"{url}/page.html", "neither a micromamba executable nor an archive"),
        (f"{url}/missing", "cannot read it"),
        (str(tmp_path / "nowhere"), "cannot read it"),
    ):
        conda_catalogue.NBCLOUD_CONDA_INSTALLER = source
        with pytest.raises(EnvironmentBuildError) as info:
            build("conda", log=lambda _: None)
        assert f"NBCLOUD_CONDA_INSTALLER={source}" in str(info.value)
        assert words in str(info.value)
        assert not is_built("conda", "1")
        assert not (conda_catalogue.NBCLOUD_ENVS_DIR / "conda-1").exists()


@pytest.mark.e2e
def test_the_docker_image_of_a_conda_environment_carries_micromamba_rooted_in_the_workspace(
    conda_catalogue, tmp_path, docker_image, docker_api
):
    """The docker runtime's image gets the same micromamba, launcher and channels."""
    from workers.runtimes import images

    root = conda_catalogue.NBCLOUD_ENVIRONMENTS_DIR
    shutil.copy(Path(__file__).parents[2] / "environments" / "Dockerfile", root / "Dockerfile")
    manifest = yaml.safe_load((root / "conda" / "manifest.yaml").read_text())
    tag = "nbcloud/test-micromamba:1"
    manifest["versions"][0]["image"] = tag
    (root / "conda" / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    catalog.cache_clear()
    conda_catalogue.NBCLOUD_CONDA_INSTALLER = str(micromamba_archive(tmp_path / "mm.tar.bz2"))
    conda_catalogue.NBCLOUD_CONDA_CHANNELS = "conda-forge, bioconda"
    try:
        assert images.build("conda", force=True, log=lambda _: None) == tag
        # The launcher, as the notebook's user with the image's HOME (the workspace).
        seen = docker_api.containers.run(
            tag,
            ["sh", "-c", "micromamba; cat /opt/env/etc/conda/condarc"],
            remove=True,
            network_mode="none",
        ).decode()
        lines = seen.splitlines()
        assert "MAMBA_ROOT_PREFIX=/workspace/.micromamba" in lines
        assert "CONDARC=/opt/env/etc/conda/condarc" in lines
        assert yaml.safe_load(seen[seen.index("channels:") :])["channels"] == [
            "conda-forge",
            "bioconda",
        ]
        assert (
            docker_api.containers.run(
                tag, ["micromamba", "--version"], remove=True, network_mode="none"
            )
            .decode()
            .startswith("env (GNU coreutils)")
        )
        # Another source or channel list is another image.
        conda_catalogue.NBCLOUD_CONDA_CHANNELS = "conda-forge"
        said = []
        images.build("conda", log=said.append)
        assert not any("is up to date" in line for line in said), said
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_api.images.remove(tag, force=True)
