"""Build environments and run each one's smoke program inside a real notebook.

    .venv/bin/python scripts/verify_envs.py [FRAMEWORK[:VERSION] ... | all] [--readme]

`make verify-envs` runs it for every environment with --readme. For each environment:
build it (`manage.py buildenvs`, skipped while up to date), then, on the platform as
`make run` runs it (scripts/platform_session.py, data in var/verify-envs), create a CPU
notebook of it through the API, run its `environments/<id>/smoke.py` in the notebook's
kernel through the gateway, and stop and delete the notebook. The smoke program prints
one JSON line whose `ok` says whether its tiny model learnt.

Prints one line per environment (build seconds, size on disk, smoke result), writes
them to var/verify-envs.json and, with --readme, into the table of
environments/README.md (rows of environments not verified in this run stay as they
were). Exit status: 0 when every environment built and passed, 1 otherwise.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from platform_session import (  # noqa: E402
    ROOT,
    CheckError,
    last_json_line,
    manage,
    remove_notebook,
    run_in_kernel,
    running_platform,
    start_notebook,
)

README = ROOT / "environments" / "README.md"
RESULTS = ROOT / "var" / "verify-envs.json"
TABLE_START = "<!-- verify-envs:start -->"
TABLE_END = "<!-- verify-envs:end -->"
HEADER = (
    "| Environment | Build (s) | Size on disk | Smoke in a notebook | Verified |\n"
    "| --- | --- | --- | --- | --- |"
)
GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "environments",
        nargs="*",
        metavar="FRAMEWORK[:VERSION]",
        help="environments to verify (default: conda), or `all`",
    )
    parser.add_argument(
        "--readme", action="store_true", help="write the results into environments/README.md"
    )
    parser.add_argument(
        "--runtime",
        choices=("process", "docker"),
        default="process",
        help="process: the environments' virtualenvs (default); docker: their images "
        "(`manage.py buildimages`), rows named `<env> (docker)`",
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each notebook (default 2)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even what is up to date (so that every row has a fresh build time)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "var" / "verify-envs",
        help="the platform's data directory (default var/verify-envs; emptied first)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where the results go as JSON (default var/verify-envs.json)",
    )
    return parser.parse_args(argv)


def _setup_django(data_dir: Path) -> None:
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
    os.environ["NBCLOUD_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
    import django

    django.setup()


def wanted(specs: list[str]) -> list[tuple[str, str]]:
    """(framework, version) pairs: `all` is every version of every framework."""
    from nbcloud.catalog.services import catalog
    from workers import environments

    if specs == ["all"]:
        return [(f.id, v.version) for f in catalog().frameworks.values() for v in f.versions]
    pairs = []
    for spec in specs or ["conda"]:
        framework_id, _, version = spec.partition(":")
        try:
            framework, found = environments.resolve(framework_id, version or None)
        except environments.EnvironmentBuildError as exc:
            raise SystemExit(f"verify_envs: {exc}") from None
        if (framework.id, found.version) not in pairs:
            pairs.append((framework.id, found.version))
    return pairs


def build(
    framework_id: str, version: str, log_dir: Path, runtime: str, force: bool = False
) -> dict:
    """Build (or find built) the environment (its image on docker), logging into log_dir
    (also the data directory of the build); its build seconds and size on disk."""
    from workers import environments

    command = "buildimages" if runtime == "docker" else "buildenvs"
    log = log_dir / f"{command}-{framework_id}-{version}.log"
    started = time.monotonic()
    with open(log, "w") as out:
        done = manage(
            log_dir,
            command,
            f"{framework_id}:{version}",
            *(["--force"] if force else []),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seconds = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-6:]
        return {"built": False, "error": " ".join(tail)[-400:], "log": str(log)}
    if runtime == "docker":
        from nbcloud.catalog.services import catalog

        image = catalog().frameworks[framework_id].get_version(version).image
        size = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Size}}", image],
            capture_output=True,
            text=True,
        ).stdout.strip()
        fresh = "up to date" not in log.read_text()
        return {
            "built": True,
            "build_seconds": seconds if fresh else None,
            "size_bytes": int(size or 0),
        }
    path = environments.env_dir(framework_id, version)
    return {
        "built": True,
        "build_seconds": environments.build_info(framework_id, version).get("seconds"),
        "size_bytes": environments.disk_usage(path),
    }


def smoke(platform, framework, version: str, cpus: int) -> dict:
    """Run the framework's smoke program in a new notebook of it; the program's result."""
    spec = {
        "name": f"verify-{framework.id}-{version}".replace(".", "-")[:60],
        "env": {
            "framework_id": framework.id,
            "framework_version": version,
            "editor_id": "jupyterlab",
        },
        "resources": {"cpu": cpus},
    }
    started = time.monotonic()
    notebook = start_notebook(platform, spec)
    try:
        output = run_in_kernel(platform, notebook, framework.smoke.read_text())
        result = last_json_line(output)
    finally:
        remove_notebook(platform, notebook["id"])
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def describe(row: dict) -> str:
    """The smoke column of the README's table."""
    if not row.get("built"):
        return f"build failed: {row.get('error', '')}"
    result = row.get("smoke")
    if result is None:
        return f"not run: {row.get('error', '')}"
    words = "pass" if result.get("ok") else "FAIL"
    if "summary" in result:
        return (
            f"{words}: {result.get('framework')} {result.get('version')} on "
            f"{result.get('device')}, {result['summary']}"
        )
    extra = f", micromamba {result['micromamba']}" if result.get("micromamba") else ""
    vision = f", torchvision {result['torchvision']}" if result.get("torchvision") else ""
    return (
        f"{words}: {result.get('framework')} {result.get('version')}{vision}{extra} on "
        f"{result.get('device')}, loss {result.get('loss_first')} → {result.get('loss_last')} "
        f"in {result.get('steps')} steps"
    )


def table_row(key: str, row: dict) -> str:
    seconds = row.get("build_seconds")
    size = row.get("size_bytes")
    return (
        f"| {key} | {seconds if seconds is not None else '–'} | "
        f"{f'{size / GIB:.2f} GiB' if size else '–'} | {describe(row)} | {row['date']} |"
    )


def write_readme(rows: dict[str, dict]) -> None:
    """Replace the rows of these environments in the README's table, keep the others."""
    text = README.read_text()
    try:
        head, rest = text.split(TABLE_START, 1)
        table, tail = rest.split(TABLE_END, 1)
    except ValueError:
        raise SystemExit(
            f"verify_envs: {README} has no {TABLE_START} ... {TABLE_END} block"
        ) from None
    lines = {
        line.split("|")[1].strip(): line
        for line in table.strip().splitlines()[2:]
        if line.startswith("|")
    }
    for key, row in rows.items():
        line = table_row(key, row)
        if row.get("build_seconds") is None and key in lines:  # up to date: the last build's
            cells = line.split("|")
            cells[2] = lines[key].split("|")[2]
            line = "|".join(cells)
        lines[key] = line
    body = "\n".join([HEADER, *(lines[key] for key in sorted(lines))])
    README.write_text(f"{head}{TABLE_START}\n{body}\n{TABLE_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup_django(args.data_dir)
    from nbcloud.catalog.services import catalog

    pairs = wanted(args.environments)
    log_dir = args.data_dir.with_name(f"{args.data_dir.name}-builds")
    log_dir.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    suffix = " (docker)" if args.runtime == "docker" else ""
    rows: dict[str, dict] = {}
    for framework_id, version in pairs:
        key = f"{framework_id}:{version}{suffix}"
        print(f"== {key}: building", flush=True)
        rows[key] = {
            **build(framework_id, version, log_dir, args.runtime, args.force),
            "date": date,
        }
    with running_platform(args.data_dir, NBCLOUD_RUNTIME=args.runtime) as platform:
        for framework_id, version in pairs:
            key = f"{framework_id}:{version}{suffix}"
            row = rows[key]
            framework = catalog().frameworks[framework_id]
            if not row["built"]:
                print(f"== {key}: {describe(row)}", flush=True)
                continue
            if framework.smoke is None:
                row["error"] = f"no smoke program in {framework.path}"
            else:
                print(f"== {key}: smoke in a notebook", flush=True)
                try:
                    row["smoke"] = smoke(platform, framework, version, args.cpus)
                except (CheckError, AssertionError, OSError) as exc:
                    row["error"] = str(exc).strip().splitlines()[-1][:400]
            print(f"== {key}: {table_row(key, row)}", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2))
    if args.readme:
        write_readme(rows)
    passed = all(row.get("smoke", {}).get("ok") for row in rows.values())
    print(f"{sum(bool(r.get('smoke', {}).get('ok')) for r in rows.values())} of {len(rows)} passed")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
