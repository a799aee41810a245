"""Every environment has pinned requirements, a smoke program and a row in the
README's table; conda and PyTorch run their smoke programs in real notebooks through
the platform (scripts/verify_envs.py, as `make verify-envs` does for all of them)."""

import json
import subprocess
import sys

from packaging.requirements import Requirement

from nbcloud.catalog.services import catalog
from support.paths import ROOT

README = ROOT / "environments" / "README.md"


def test_every_environment_pins_its_requirements_and_has_a_smoke_program():
    for framework in catalog().frameworks.values():
        assert framework.smoke is not None, f"{framework.path} has no smoke.py"
        source = framework.smoke.read_text()
        assert 'if __name__ == "__main__":' in source and '"ok"' in source, framework.id
        for version in framework.versions:
            for line in version.requirements:
                specifiers = list(Requirement(line).specifier)
                assert [s.operator for s in specifiers] == ["=="], (
                    f"{framework.id} {version.version}: {line!r} is not pinned with =="
                )


def test_the_readme_table_has_a_row_for_every_environment():
    table = README.read_text().split("<!-- verify-envs:start -->")[1].split("<!--")[0]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    wanted = {f"{f.id}:{v.version}" for f in catalog().frameworks.values() for v in f.versions}
    assert wanted <= rows, f"no row for {sorted(wanted - rows)}: run `make verify-envs`"


def verify(tmp_path, *argv: str) -> dict:
    """scripts/verify_envs.py argv on a platform of its own; its rows, once it passed."""
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "verify_envs.py"),
            *argv,
            "--data-dir",
            str(tmp_path / "platform"),
            "--results",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(results.read_text())


def test_conda_and_pytorch_learn_in_notebooks_through_the_platform(tmp_path):
    rows = verify(tmp_path, "conda", "pytorch")
    assert set(rows) == {"conda:py311", "pytorch:2.13"}
    conda, pytorch = rows["conda:py311"]["smoke"], rows["pytorch:2.13"]["smoke"]
    assert conda["ok"] and conda["framework"] == "numpy"
    assert pytorch["ok"] and pytorch["version"].startswith("2.13.0")


def test_conda_learns_in_a_notebook_on_the_docker_runtime(tmp_path, docker_image):
    """The same smoke program in the conda image (`make docker-images`), through the
    platform on its docker runtime: both runtimes' builds are proven on every run."""
    rows = verify(tmp_path, "conda", "--runtime", "docker")
    assert set(rows) == {"conda:py311 (docker)"}
    row = rows["conda:py311 (docker)"]
    assert row["smoke"]["ok"] and row["smoke"]["framework"] == "numpy"
    assert row["size_bytes"] > 0
