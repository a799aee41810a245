"""Pack what scripts/gpu_check.py needs on a GPU machine that reaches no package index.

    .venv/bin/python scripts/device_bundle.py [--python-version 3.12] [--out .device]

The machine (an air-gapped GPU host, or a GPU VM image: its own Python with a CUDA build of torch, nothing
downloadable, at most 64 MiB carried with the checkout) gets everything else from
here; scripts/device_gpu_check.sh unpacks it there and runs the check. This writes:

- OUT/site.tar.xz: the platform's dependencies (pyproject.toml), the editors' packages
  (jupyterlab, ipykernel: environments/catalog.yaml) and the checks' kernel client
  (websocket-client), as manylinux x86_64 wheels for that Python installed into one
  folder; without the packages the machine already has (scripts/device-present.txt:
  the machine's own list), without bytecode, and without files nothing there reads
  (translations' .po sources, jedi's type stubs, botocore's models of services other
  than S3 and STS);
- OUT/debs/: Debian's bubblewrap, iproute2 and nftables with their libraries, which
  the process runtime needs, unpacked there only where the machine lacks them.

Fails (exit 1) when the whole is larger than --limit-mib, which leaves room for the
checkout under the machine's 64 MiB.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PRESENT = ROOT / "scripts" / "device-present.txt"
DEBS = (
    "bubblewrap",
    "iproute2",
    "nftables",
    "libnftables1",
    "libnftnl11",
    "libjansson4",
    "libmnl0",
    "libxtables12",
    "libbpf1",
    "libelf1",
    # Not in a minimal Debian or Ubuntu root: ip needs libbsd (and its libmd), nft libedit.
    "libbsd0",
    "libmd0",
    "libedit2",
)
# The glibc of a current GPU image is 2.35 or newer; wheels for older ones still load.
GLIBC_MINORS = (39, 38, 36, 35, 34, 31, 28, 27, 26, 24, 17, 12, 5)
BOTOCORE_KEPT = {"s3", "sts"}
MIB = 1024**2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the machine's Python")
    parser.add_argument("--out", type=Path, default=ROOT / ".device", help="default .device")
    parser.add_argument("--limit-mib", type=float, default=56.0, help="default 56")
    return parser.parse_args(argv)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    """What the platform, the editors and the checks import, as pip requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    catalogue = yaml.safe_load((ROOT / "environments" / "catalog.yaml").read_text())
    editors = [r for e in catalogue["editors"] for r in e.get("requirements", [])]
    return list(dict.fromkeys([*project["dependencies"], *editors, "websocket-client"]))


def present() -> set[str]:
    """The distributions the machine already has (one name per line, # comments)."""
    lines = (line.split("#")[0].strip() for line in PRESENT.read_text().splitlines())
    return {normalise(line) for line in lines if line}


def _pip_target_args(python_version: str) -> list[str]:
    platforms = [f"manylinux_2_{m}_x86_64" for m in GLIBC_MINORS]
    platforms += ["manylinux2014_x86_64", "manylinux1_x86_64"]
    return [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        *(arg for tag in platforms for arg in ("--platform", tag)),
    ]


def wheel_name(path: Path) -> str:
    return normalise(path.name.split("-")[0])


def site(python_version: str, work: Path) -> tuple[Path, list[str]]:
    """The packages installed into work/site; and the names left out as present."""
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    target = _pip_target_args(python_version)
    subprocess.run(
        [*pip, "download", "-q", "-d", str(wheels), *target, *requirements()], check=True
    )
    have = present()
    skipped = sorted(wheel_name(w) for w in wheels.glob("*.whl") if wheel_name(w) in have)
    wanted = [str(w) for w in wheels.glob("*.whl") if wheel_name(w) not in have]
    folder = work / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-compile", "--no-index", "--target"]
        + [str(folder), *target, *wanted],
        check=True,
    )
    prune(folder)
    return folder, skipped


def prune(folder: Path) -> None:
    """Drop what nothing on the machine reads: translations' sources, jedi's stubs,
    botocore's models of services the platform does not call, bytecode."""
    for path in folder.rglob("*.po"):
        path.unlink()
    for path in folder.rglob("__pycache__"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(folder / "jedi" / "third_party" / "typeshed", ignore_errors=True)
    models = folder / "botocore" / "data"
    if models.is_dir():
        for service in models.iterdir():
            if service.is_dir() and service.name not in BOTOCORE_KEPT:
                shutil.rmtree(service)


def pack(folder: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        tar.add(folder, arcname="site")


def debs(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.deb"):
        old.unlink()
    subprocess.run(["apt-get", "download", "-q", *DEBS], cwd=out, check=True)


def size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nbcloud-device-") as tmp:
        folder, skipped = site(args.python_version, Path(tmp))
        print(f"left out, the machine has them: {', '.join(skipped)}")
        pack(folder, args.out / "site.tar.xz")
    debs(args.out / "debs")
    total = size(args.out)
    print(
        f"{args.out}: site.tar.xz {size(args.out / 'site.tar.xz') / MIB:.1f} MiB, "
        f"debs {size(args.out / 'debs') / MIB:.1f} MiB, {total / MIB:.1f} MiB in all"
    )
    if total > args.limit_mib * MIB:
        print(f"too large: over {args.limit_mib} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
