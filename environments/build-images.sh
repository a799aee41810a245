#!/bin/bash
# Build the environment images from the one Dockerfile template: every version of the
# named frameworks (all of them by default), tagged as their manifests say.
#   environments/build-images.sh [FRAMEWORK ...]
# Needs docker, nbcloud/base:latest (base/build-base.sh) and a Python with PyYAML
# (PYTHON, default python3; the project's .venv/bin/python has it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

"${PYTHON:-python3}" - "$here" "$@" <<'PY' |
import pathlib, sys, yaml

root, wanted = pathlib.Path(sys.argv[1]), sys.argv[2:]
editors = {
    e["id"]: e.get("requirements", [])
    for e in yaml.safe_load((root / "catalog.yaml").read_text())["editors"]
}
known = sorted(p.parent.name for p in root.glob("*/manifest.yaml"))
for name in set(wanted) - set(known):
    sys.exit(f"unknown framework {name!r}; choose from {', '.join(known)}")
for folder in [root / name for name in wanted or known]:
    m = yaml.safe_load((folder / "manifest.yaml").read_text())
    reqs = " ".join(dict.fromkeys(r for e in m["editors"] for r in editors[e]))
    for v in m["versions"]:
        image = v.get("image", f"nbcloud/{m['id']}:{v['version']}")
        print(folder, v.get("requirements", "requirements.txt"), image,
              f"{m['id']}:{v['version']}", reqs, sep="\t")
PY
while IFS=$'\t' read -r folder requirements image environment editor_requirements; do
    echo "== $environment -> $image"
    docker build -f "$here/Dockerfile" \
        --build-arg REQUIREMENTS="$requirements" \
        --build-arg EDITOR_REQUIREMENTS="$editor_requirements" \
        --build-arg ENVIRONMENT="$environment" \
        -t "$image" "$folder" </dev/null
done
