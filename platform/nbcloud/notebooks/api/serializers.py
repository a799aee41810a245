from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import serializers

from nbcloud.billing.services import costs_to_date
from nbcloud.catalog.services import catalog
from nbcloud.monitoring.samples import dashboard_url
from nbcloud.notebooks import spec
from nbcloud.notebooks.models import Backup, Notebook, NotebookEvent, NotebookGrant
from nbcloud.notebooks.volumes import ObjectVolume, Volume
from nbcloud.ssh.services import ssh_url

MAX_GPUS = 4
MAX_CPUS = 12


def _django_to_drf(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from None


def _choices(values) -> str:
    return ", ".join(sorted(values))


class EnvSerializer(serializers.Serializer):
    framework_id = serializers.CharField()
    framework_version = serializers.CharField(required=False, allow_blank=True)
    editor_id = serializers.CharField()

    def validate(self, attrs):
        cat = catalog()
        framework = cat.frameworks.get(attrs["framework_id"])
        if framework is None:
            raise serializers.ValidationError(
                {
                    "framework_id": f"unknown framework {attrs['framework_id']!r}; valid choices: "
                    f"{_choices(cat.frameworks)}"
                }
            )
        version = framework.get_version(attrs.get("framework_version"))
        if version is None:
            raise serializers.ValidationError(
                {
                    "framework_version": f"unknown version {attrs['framework_version']!r} of "
                    f"{framework.id}; valid choices: {_choices(v.version for v in framework.versions)}"
                }
            )
        if attrs["editor_id"] not in framework.editors:
            raise serializers.ValidationError(
                {
                    "editor_id": f"unknown editor {attrs['editor_id']!r} for {framework.id}; valid "
                    f"choices: {_choices(framework.editors)}"
                }
            )
        attrs["framework_version"] = version.version
        return attrs


class ResourcesSerializer(serializers.Serializer):
    flavor = serializers.CharField(required=False)
    gpu = serializers.IntegerField(required=False, min_value=1, max_value=MAX_GPUS)
    cpu = serializers.IntegerField(required=False, min_value=1, max_value=MAX_CPUS)

    def validate(self, attrs):
        if "gpu" in attrs and "cpu" in attrs:
            raise serializers.ValidationError(
                "set either gpu or cpu, not both (a notebook runs on GPUs or on CPUs)"
            )
        cat = catalog()
        if "flavor" in attrs:
            flavor = cat.flavors.get(attrs["flavor"])
            if flavor is None:
                raise serializers.ValidationError(
                    {
                        "flavor": f"unknown flavor {attrs['flavor']!r}; valid choices: {_choices(cat.flavors)}"
                    }
                )
            kind = "cpu" if "cpu" in attrs else "gpu" if "gpu" in attrs else flavor.type
            if flavor.type != kind:
                raise serializers.ValidationError(
                    {
                        "flavor": f"flavor {flavor.id} is a {flavor.type.upper()} flavor but {kind} "
                        f"was requested; {kind.upper()} flavors: "
                        f"{_choices(f.id for f in cat.flavors.values() if f.type == kind)}"
                    }
                )
        else:
            kind = "cpu" if "cpu" in attrs else "gpu"
            flavor = cat.default_flavor(kind)
        units = attrs.get(kind, 1)
        if units > flavor.max:
            raise serializers.ValidationError(
                {kind: f"flavor {flavor.id} allows at most {flavor.max} {kind.upper()}s"}
            )
        return {
            "flavor": flavor.id,
            "gpu": units if kind == "gpu" else 0,
            "cpu": units if kind == "cpu" else 0,
        }


class EnvVarSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=255)
    value = serializers.CharField(allow_blank=True, max_length=32768)

    def validate_name(self, value: str) -> str:
        return _django_to_drf(spec.check_env_name, value)


class LabelsField(serializers.DictField):
    child = serializers.CharField(allow_blank=True)

    def to_internal_value(self, data):
        return _django_to_drf(spec.check_labels, super().to_internal_value(data))


class VolumeField(serializers.Field):
    """A volume string or object in; its value out (stored as `to_dict()`)."""

    def to_internal_value(self, data) -> Volume:
        return _django_to_drf(spec.parse_volume, data)

    def to_representation(self, value):
        return value


def ssh_keys_field(**kwargs) -> serializers.ListField:
    key = serializers.RegexField(
        r"^(ssh-|ecdsa-|sk-)[\w@.-]+ [A-Za-z0-9+/=]+( .*)?$",
        error_messages={
            "invalid": "not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... me@host')"
        },
    )
    return serializers.ListField(child=key, required=False, max_length=20, **kwargs)


def name_field(**kwargs) -> serializers.RegexField:
    """A notebook's name."""
    return serializers.RegexField(
        r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,99}$",
        error_messages={
            "invalid": "use up to 100 letters, digits, '-', '_' and '.', starting with a letter or digit"
        },
        **kwargs,
    )


MIN_LIMIT = 60
MAX_LIMIT = 366 * 24 * 3600


def limit_field(**kwargs) -> serializers.IntegerField:
    """idle_timeout / max_runtime: seconds, or null for the project's default."""
    message = f"seconds from {MIN_LIMIT} to {MAX_LIMIT}, or null for the project's default"
    return serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=MIN_LIMIT,
        max_value=MAX_LIMIT,
        error_messages={"min_value": message, "max_value": message, "invalid": message},
        **kwargs,
    )


class NotebookSpecSerializer(serializers.Serializer):
    """What a user asks for; validated into the model's flat fields."""

    name = name_field()
    labels = LabelsField(required=False, default=dict)
    env = EnvSerializer()
    env_vars = EnvVarSerializer(many=True, required=False, default=list)
    resources = ResourcesSerializer(required=False, default=dict)
    region = serializers.CharField(required=False)
    volumes = serializers.ListField(
        child=VolumeField(), required=False, default=list, max_length=32
    )
    unsecure_http = serializers.BooleanField(required=False, default=False)
    ssh_public_keys = ssh_keys_field(default=list)
    timeout_auto_restart = serializers.BooleanField(required=False, default=False)
    idle_timeout = limit_field(default=None)
    max_runtime = limit_field(default=None)

    def validate_resources(self, value):
        # The default {} skips the nested validate(): run it for the default too.
        return value if "flavor" in value else ResourcesSerializer().validate(value)

    def validate_region(self, value):
        regions = catalog().regions
        if value not in regions:
            raise serializers.ValidationError(
                f"unknown region {value!r}; valid choices: {_choices(regions)}"
            )
        return value

    def validate_volumes(self, value: list[Volume]) -> list[dict]:
        _django_to_drf(spec.check_volume_set, value)
        project = self.context.get("project")
        kinds = dict(project.datastores.values_list("alias", "type")) if project else {}
        for volume in value:
            if not isinstance(volume, ObjectVolume):
                continue
            if volume.alias not in kinds:
                raise serializers.ValidationError(
                    f"volume {volume.spec!r}: unknown datastore alias {volume.alias!r}; "
                    f"known: {', '.join(sorted(kinds)) or 'none'} (add one with POST "
                    ".../datastores/)"
                )
            if kinds[volume.alias] != "s3":
                raise serializers.ValidationError(
                    f"volume {volume.spec!r}: datastore {volume.alias!r} is a "
                    f"{kinds[volume.alias]} datastore; object-storage volumes need an s3 one"
                )
        return [volume.to_dict() for volume in value]

    def to_model_fields(self) -> dict:
        data = self.validated_data
        env, resources = data["env"], data["resources"]
        return {
            "name": data["name"],
            "labels": data["labels"],
            "framework_id": env["framework_id"],
            "framework_version": env["framework_version"],
            "editor_id": env["editor_id"],
            "env_vars": [dict(e) for e in data["env_vars"]],
            "flavor": resources["flavor"],
            "gpu": resources["gpu"],
            "cpu": resources["cpu"],
            "region": data.get("region") or catalog().default_region.id,
            "volumes": data["volumes"],
            "unsecure_http": data["unsecure_http"],
            "ssh_public_keys": data["ssh_public_keys"],
            "timeout_auto_restart": data["timeout_auto_restart"],
            "idle_timeout": data["idle_timeout"],
            "max_runtime": data["max_runtime"],
        }


class ForkSerializer(serializers.Serializer):
    name = name_field(required=False, default="")


class NotebookUpdateSerializer(serializers.Serializer):
    """The fields OVH lets one change: labels any time; the rest while stopped."""

    labels = LabelsField(required=False)
    env_vars = EnvVarSerializer(many=True, required=False)
    unsecure_http = serializers.BooleanField(required=False)
    ssh_public_keys = ssh_keys_field()
    timeout_auto_restart = serializers.BooleanField(required=False)
    idle_timeout = limit_field()
    max_runtime = limit_field()

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                f"cannot change {', '.join(sorted(unknown))}; changeable fields: {_choices(self.fields)}"
            )
        if "env_vars" in attrs:
            attrs["env_vars"] = [dict(e) for e in attrs["env_vars"]]
        return attrs


class NotebookListSerializer(serializers.ListSerializer):
    """Notebooks whose costs to date are read for all of them at once, not one by one."""

    def to_representation(self, data):
        notebooks = list(data.all() if isinstance(data, models.manager.BaseManager) else data)
        self.child.costs = costs_to_date([nb.pk for nb in notebooks])
        return super().to_representation(notebooks)


class NotebookSerializer(serializers.ModelSerializer):
    spec = serializers.SerializerMethodField()
    status = serializers.SerializerMethodField()
    project = serializers.CharField(source="project.name")
    created_by = serializers.CharField(source="created_by.username", default=None)
    # The costs to date of the notebooks being listed, by id (NotebookListSerializer's).
    costs: dict | None = None

    class Meta:
        model = Notebook
        fields = ["id", "project", "created_at", "updated_at", "created_by", "spec", "status"]
        list_serializer_class = NotebookListSerializer

    def get_spec(self, nb: Notebook) -> dict:
        return {
            "name": nb.name,
            "labels": nb.labels,
            "env": {
                "framework_id": nb.framework_id,
                "framework_version": nb.framework_version,
                "editor_id": nb.editor_id,
            },
            "env_vars": nb.env_vars,
            "resources": {"flavor": nb.flavor, "gpu": nb.gpu, "cpu": nb.cpu},
            "region": nb.region,
            "volumes": nb.volumes,
            "unsecure_http": nb.unsecure_http,
            "ssh_public_keys": nb.ssh_public_keys,
            "timeout_auto_restart": nb.timeout_auto_restart,
            "idle_timeout": nb.idle_timeout,
            "max_runtime": nb.max_runtime,
        }

    def get_status(self, nb: Notebook) -> dict:
        return {
            "state": nb.state,
            "info": {"code": nb.info_code, "message": nb.info_message},
            "url": nb.url or None,
            "monitoring_url": dashboard_url(nb),
            "ssh_url": ssh_url(nb),
            "last_activity_at": nb.last_activity_at,
            "host": nb.host.name if nb.host_id else None,
            "gpu_uuids": nb.gpu_uuids,
            "last_started_at": nb.last_started_at,
            "last_stopped_at": nb.last_stopped_at,
            "state_changed_at": nb.state_changed_at,
            "duration": _duration(nb),
            "workspace_size": nb.workspace_size,
            "cost_to_date": [c.as_dict() for c in self._costs_of(nb)],
            "data_sync": nb.data_sync,
        }

    def _costs_of(self, nb: Notebook) -> list:
        costs = self.costs if self.costs is not None else costs_to_date([nb.pk])
        return costs.get(nb.pk, [])


def _duration(nb: Notebook) -> int:
    """Seconds since the editor came up, while it runs."""
    from django.utils import timezone

    if nb.state == "RUNNING" and nb.last_started_at:
        return int((timezone.now() - nb.last_started_at).total_seconds())
    return 0


class NotebookEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = NotebookEvent
        fields = ["at", "actor", "from_state", "to_state", "code", "message"]


class BackupSerializer(serializers.ModelSerializer):
    class Meta:
        model = Backup
        fields = ["id", "created_at", "size", "sha256", "workspace_size"]


class GrantSerializer(serializers.ModelSerializer):
    username = serializers.SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        error_messages={"does_not_exist": "no user named {value!r}: they must sign up first"},
    )
    role = serializers.ChoiceField(choices=["read", "operator"])
    granted_by = serializers.CharField(source="granted_by.username", read_only=True, default=None)

    class Meta:
        model = NotebookGrant
        fields = ["username", "role", "granted_by", "created_at"]
        read_only_fields = ["created_at"]
