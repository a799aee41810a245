"""OVHcloud AI shapes <-> nbcloud shapes, both ways, and nothing else.

OVH's API (as its `ovhai` SDK reads and writes it) speaks camelCase, nests
volumes as objects and names roles `ai_training_*`; nbcloud's API speaks
snake_case and the `--volume` string syntax. Functions named `*_in` turn an
OVH request body into the body nbcloud's own API takes; `*_out` turn what
nbcloud's serializers answer into what the SDK's models read. No rule lives
here: whatever the translated body asks, nbcloud's own serializers and
services decide.
"""

import secrets
import shlex

from nbcloud.errors import Invalid

GIB = 1024**3

# OVH's camelCase name -> nbcloud's name, for the keys that differ.
SPEC_NAMES = {
    "envVars": "env_vars",
    "sshPublicKeys": "ssh_public_keys",
    "timeoutAutoRestart": "timeout_auto_restart",
    "unsecureHttp": "unsecure_http",
}
ENV_NAMES = {
    "frameworkId": "framework_id",
    "frameworkVersion": "framework_version",
    "editorId": "editor_id",
}
TOKEN_NAMES = {"labelSelector": "label_selector"}
QUERY_NAMES = {"labelSelector": "label_selector"}
# nbcloud's field names as OVH spells them, for error messages.
OVH_FIELD_NAMES = {
    native: ovh
    for ovh, native in {
        **SPEC_NAMES,
        **ENV_NAMES,
        **TOKEN_NAMES,
        "mountPath": "mount_path",
    }.items()
}

# OVH's token roles <-> nbcloud's. nbcloud's own names are accepted too.
ROLE_IN = {"ai_training_read": "read", "ai_training_operator": "operator"}
ROLE_OUT = {native: ovh for ovh, native in ROLE_IN.items()}

# OVH's `sort` values for the notebook list -> nbcloud's model fields.
SORT_FIELDS = {
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "name": "name",
    "id": "id",
    "state": "state",
}


def _renamed(data: dict, names: dict[str, str]) -> dict:
    """Keys renamed by `names`; other keys kept (nbcloud refuses what it does not know)."""
    return {names.get(k, k): v for k, v in data.items() if v is not None}


def _body(data) -> dict:
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    return data


# Requests.


def notebook_in(data) -> dict:
    """An OVH NotebookSpec -> the body of nbcloud's POST .../notebooks/."""
    spec = _renamed(_body(data), SPEC_NAMES)
    env = spec.get("env")
    if isinstance(env, dict):
        spec["env"] = _renamed(env, ENV_NAMES)
    if isinstance(spec.get("resources"), dict):
        spec["resources"] = resources_in(spec["resources"])
    if isinstance(spec.get("volumes"), list):
        spec["volumes"] = [volume_in(v) for v in spec["volumes"]]
    return spec


def with_default_name(spec: dict) -> dict:
    """OVH names a notebook when the spec does not: FRAMEWORK-EDITOR-xxxx, as `nbc` does."""
    if spec.get("name"):
        return spec
    env = spec.get("env") if isinstance(spec.get("env"), dict) else {}
    prefix = f"{env.get('framework_id') or 'notebook'}-{env.get('editor_id') or 'editor'}"
    return {**spec, "name": f"{prefix}-{secrets.token_hex(2)}"}


def update_in(data) -> dict:
    """An OVH NotebookSpecUpdate -> the body of nbcloud's PATCH .../notebooks/{id}/."""
    return notebook_in(data)


def label_in(data, labels: dict) -> dict:
    """An OVH LabelUpdate (one label set, or removed without a value) -> the new labels."""
    data = _body(data)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid("give the label's name", field="name")
    labels = dict(labels)
    if data.get("value") is None:
        labels.pop(name, None)
    else:
        labels[name] = data["value"]
    return labels


def resources_in(resources: dict) -> dict:
    """What one asks for: a flavor and GPUs or CPUs. A count of 0 means none.

    Memory, storage and GPU details follow from the flavor, as they do at OVH;
    the values that `resources_out` adds are dropped here so that a spec read
    back can be sent again.
    """
    return {k: resources[k] for k in ("flavor", "gpu", "cpu") if resources.get(k) not in (None, 0)}


def volume_in(volume):
    """An OVH Volume object -> nbcloud's object form of a volume (a string passes as is)."""
    if not isinstance(volume, dict):
        return volume
    base = {
        "mount_path": volume.get("mountPath") or "",
        "permission": volume.get("permission") or "RO",
    }
    if isinstance(volume.get("dataStore"), dict):
        source = volume["dataStore"]
        alias = source.get("alias")
    elif isinstance(volume.get("privateSwift"), dict):
        source = volume["privateSwift"]
        alias = source.get("region")
    elif isinstance(volume.get("publicGit"), dict):
        # A branch rides on the URL: https://host/repo.git@branch.
        return {**base, "url": volume["publicGit"].get("url") or ""}
    else:
        kinds = sorted(set(volume) - {"mountPath", "permission", "cache"}) or ["none"]
        raise Invalid(
            f"volume source {', '.join(kinds)} is not available on nbcloud: use dataStore "
            "{alias, container, prefix} (object storage) or publicGit {url} (git)"
        )
    return {
        **base,
        "container": source.get("container") or "",
        "alias": alias or "",
        "prefix": source.get("prefix") or "",
        "cache": bool(volume.get("cache")),
    }


def token_in(data) -> dict:
    """An OVH TokenSpec -> the body of nbcloud's POST .../tokens/."""
    token = _renamed(_body(data), TOKEN_NAMES)
    if isinstance(token.get("role"), str):
        token["role"] = ROLE_IN.get(token["role"], token["role"])
    return token


def query_in(params) -> dict:
    """OVH's query parameters -> nbcloud's, as a list of values per name."""
    return {QUERY_NAMES.get(k, k): params.getlist(k) for k in params}


# Answers.


def _dropping_none(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None}


def notebook_out(nb: dict) -> dict:
    """nbcloud's NotebookSerializer data -> an OVH Notebook."""
    spec, status = nb["spec"], nb["status"]
    return _dropping_none(
        {
            "id": nb["id"],
            "createdAt": nb["created_at"],
            "updatedAt": nb["updated_at"],
            "user": nb["created_by"],
            "spec": {
                "name": spec["name"],
                "labels": spec["labels"],
                "env": {
                    "frameworkId": spec["env"]["framework_id"],
                    "frameworkVersion": spec["env"]["framework_version"],
                    "editorId": spec["env"]["editor_id"],
                },
                "envVars": spec["env_vars"],
                "resources": resources_out(spec["resources"]),
                "volumes": [volume_out(v) for v in spec["volumes"]],
                "unsecureHttp": spec["unsecure_http"],
                "sshPublicKeys": spec["ssh_public_keys"],
                "timeoutAutoRestart": spec["timeout_auto_restart"],
                # nbcloud's own: where it runs (OVH puts the region in its host name).
                "region": spec["region"],
            },
            "status": status_out(status, spec["volumes"]),
        }
    )


def status_out(status: dict, volumes: list[dict]) -> dict:
    out = {
        "state": status["state"],
        "info": {"code": status["info"]["code"], "message": status["info"]["message"]},
        "url": status["url"],
        "monitoringUrl": status["monitoring_url"],
        "sshUrl": status.get("ssh_url"),
        "lastStartedAt": status["last_started_at"],
        "lastStoppedAt": status["last_stopped_at"],
        "duration": status["duration"],
        "dataSync": [data_sync_progress_out(p) for p in status.get("data_sync") or []],
        "volumes": [{"mountPath": v["mount_path"]} for v in volumes],
    }
    if status.get("workspace_size") is not None:
        out["workspace"] = {"storageUsed": status["workspace_size"]}
    if not out["url"]:
        del out["url"]
    return out


def data_sync_progress_out(progress: dict) -> dict:
    """One volume's sync in nbcloud's status -> an OVH DataSync with one progress entry."""
    entry = {
        "direction": progress.get("direction"),
        "state": progress.get("state"),
        "info": progress.get("volume"),
        "processed": progress.get("files_done"),
        "total": progress.get("files_total"),
        "transferredBytes": progress.get("bytes_done"),
    }
    if progress.get("mount_path"):
        entry["volumeStatus"] = {"mountPath": progress["mount_path"]}
    status = {"state": progress.get("state"), "progress": [_dropping_none(entry)]}
    if progress.get("message"):
        status["info"] = {"message": progress["message"]}
    return {
        "spec": {"direction": progress.get("direction"), "volume": progress.get("volume")},
        "status": status,
    }


def resources_out(resources: dict) -> dict:
    """The flavor and unit count, with what follows from them as OVH shows it."""
    from nbcloud.catalog.services import catalog

    out = {"flavor": resources["flavor"], "gpu": resources["gpu"], "cpu": resources["cpu"]}
    flavor = catalog().flavors.get(resources["flavor"])
    if flavor is None:
        return out
    given = flavor.resources(resources["gpu"] or resources["cpu"])
    out["memory"] = given.memory_bytes
    out["ephemeralStorage"] = given.disk_bytes
    if flavor.gpu_model:
        out["gpuModel"] = flavor.gpu_model
        out["gpuMemory"] = flavor.gpu_memory_gib * GIB
    return out


def volume_out(volume: dict) -> dict:
    base = {"mountPath": volume["mount_path"], "permission": volume["permission"]}
    if volume["type"] == "git":
        branch = f"@{volume['branch']}" if volume.get("branch") else ""
        return {**base, "cache": False, "publicGit": {"url": volume["url"] + branch}}
    source = {"alias": volume["alias"], "container": volume["container"]}
    if volume.get("prefix"):
        source["prefix"] = volume["prefix"]
    return {**base, "cache": volume.get("cache", False), "dataStore": source}


def backup_out(backup: dict) -> dict:
    """nbcloud's BackupSerializer data -> an OVH NotebookBackup (the workspace's)."""
    return {
        "id": backup["id"],
        "createdAt": backup["created_at"],
        "updatedAt": backup["created_at"],
        "backupDate": backup["created_at"],
        "mountPath": "/workspace",
    }


def token_out(token: dict) -> dict:
    """nbcloud's ApiToken(Value)Serializer data -> an OVH Token."""
    return {
        "id": str(token["id"]),
        "createdAt": token["created_at"],
        "spec": {
            "name": token["name"],
            "role": ROLE_OUT.get(token["role"], token["role"]),
            "labelSelector": token["label_selector"],
        },
        "status": {"value": token.get("value")},
    }


def quotas_out(quota: dict) -> dict:
    """nbcloud's project quota -> an OVH ProjectQuotas: the GPUs the project may use at once."""
    return {"resources": {"GPU": quota["gpu"]["limit"]}}


def me_out(*, username: str, quota: dict) -> dict:
    return {
        "name": username,
        "tenant": quota["project"],
        "role": ROLE_OUT[quota["role"]],
        "tokenKind": "app",
        "quotas": quotas_out(quota),
    }


def framework_out(framework: dict) -> dict:
    return {
        "id": framework["id"],
        "name": framework["name"],
        "description": framework["description"],
        "docUrl": framework["doc_url"],
        "versions": framework["versions"],
        # What survives a stop: the workspace (nbcloud keeps all of it).
        "savedPaths": ["/workspace"],
    }


def editor_out(editor: dict) -> dict:
    return {
        "id": editor["id"],
        "name": editor["name"],
        "description": editor["name"],
        "docUrl": editor["doc_url"],
        "versions": [],
    }


def flavor_out(flavor: dict) -> dict:
    out = {
        "id": flavor["id"],
        "type": flavor["type"],
        "default": flavor["default"],
        "max": flavor["max"],
        "description": (f"{flavor['gpu_model']} GPU" if flavor["type"] == "gpu" else "vCPU"),
        "resourcesPerUnit": {
            "cpu": flavor["cpus"],
            "memory": flavor["memory_gib"] * GIB,
            "ephemeralStorage": flavor["storage_gib"] * GIB,
        },
    }
    if flavor["gpu_model"]:
        out["gpuInformation"] = {
            "gpuModel": flavor["gpu_model"],
            "gpuMemory": flavor["gpu_memory_gib"] * GIB,
        }
    return out


def data_sync_out(nb: dict, direction: str) -> dict:
    """A data sync just requested on a notebook -> an OVH DataSync."""
    at = nb["updated_at"]
    return {
        "createdAt": at,
        "updatedAt": at,
        "spec": {"direction": direction, "manual": True},
        "status": {"state": "QUEUED", "queuedAt": at, "progress": []},
    }


def command_out(spec: dict) -> dict:
    """The `nbc` command line that creates the notebook of a validated spec.

    SSH public keys are left out: `nbc` reads them from files (-s FILE).
    """
    env, resources = spec.get("env") or {}, spec.get("resources") or {}
    argv = ["nbc", "notebook", "run", env.get("framework_id", ""), env.get("editor_id", "")]
    options = [
        ("--framework-version", env.get("framework_version")),
        ("--flavor", resources.get("flavor")),
        ("--gpu", resources.get("gpu")),
        ("--cpu", resources.get("cpu")),
        ("--name", spec.get("name")),
        ("--region", spec.get("region")),
    ]
    argv += [str(part) for option, value in options if value for part in (option, value)]
    for key, value in (spec.get("labels") or {}).items():
        argv += ["-l", f"{key}={value}"]
    for var in spec.get("env_vars") or []:
        argv += ["-e", f"{var['name']}={var['value']}"]
    for volume in spec.get("volumes") or []:
        argv += ["-v", volume["spec"]]
    if spec.get("unsecure_http"):
        argv.append("--unsecure-http")
    if spec.get("timeout_auto_restart"):
        argv.append("--restart-on-timeout")
    return {"command": shlex.join(argv)}


def field_path_out(path: str) -> str:
    """'env.framework_id' -> 'env.frameworkId': an error's field path in OVH's names."""

    def segment(part: str) -> str:
        name, bracket, index = part.partition("[")
        return OVH_FIELD_NAMES.get(name, name) + bracket + index

    return ".".join(segment(p) for p in path.split("."))
