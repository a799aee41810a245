"""Objects in a project's S3 datastores, for clients that never see the datastore's keys.

    GET  /projects/{p}/datastores/{alias}/containers/{container}/objects/
         ?prefix=&delimiter=&cursor=&size=       one page of objects (and common prefixes)
    POST /projects/{p}/datastores/{alias}/containers/{container}/objects/presign/
         {"method": "get" | "put", "keys": [...], "expires_in": 3600}
    POST .../objects/multipart/            {"key", "size"}: an upload in parts, a URL a part
    POST .../objects/multipart/complete/   {"key", "upload_id", "parts": [{"part_number", "etag"}]}
    POST .../objects/multipart/abort/      {"key", "upload_id"}

The API never returns a datastore's secret, so a client (`nbc data`) moves the
bytes itself through URLs presigned with the datastore's credentials: the
platform never carries them. Listing and `get` URLs need a role on the
project; `put` URLs and multipart uploads (files larger than one PUT may be,
or faster in parallel parts) need the operator role.

A URL lives at most an hour (URL_LIFETIME), and never past the expiry of the
token that asked for it. A token with a label selector reaches only the
containers that the notebooks it matches mount as volumes.
"""

import math
import re

from botocore.exceptions import BotoCoreError, ClientError
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from nbcloud.api.access import visible_notebooks
from nbcloud.api.views import ProjectRolePermission, ProjectScopedMixin, find
from nbcloud.errors import DomainError, Invalid, NotFound, Unavailable
from nbcloud.notebooks.models import Notebook
from nbcloud.notebooks.volumes import ObjectVolume
from nbcloud.notebooks.volumes import from_dict as volume_from_dict
from nbcloud.projects.models import WRITE_ROLES, ApiToken, Datastore

# S3's rule for bucket names, checked here so that a bad name is a clear 400.
CONTAINER_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024
PRESIGN_OPERATIONS = {"get": "get_object", "put": "put_object"}
# S3's limits: parts of 5 MiB at least (but the last), 10,000 parts, 5 TiB an object.
MIN_PART_SIZE = 8 * 1024**2
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4
URL_LIFETIME = 3600  # seconds: the most a presigned URL lives


class ObjectQuerySerializer(serializers.Serializer):
    prefix = serializers.CharField(required=False, default="", allow_blank=True, max_length=1024)
    delimiter = serializers.CharField(required=False, default="", allow_blank=True, max_length=8)
    cursor = serializers.CharField(required=False, default="", allow_blank=True, max_length=2048)
    size = serializers.IntegerField(required=False, default=1000, min_value=1, max_value=1000)


class ObjectSerializer(serializers.Serializer):
    key = serializers.CharField()
    size = serializers.IntegerField()
    etag = serializers.CharField()
    last_modified = serializers.DateTimeField()


class ObjectPageSerializer(serializers.Serializer):
    datastore = serializers.CharField()
    container = serializers.CharField()
    prefix = serializers.CharField()
    results = ObjectSerializer(many=True)
    prefixes = serializers.ListField(child=serializers.CharField())
    next_cursor = serializers.CharField(allow_null=True)


def _key(value: str) -> str:
    """An object key S3 accepts (DRF's CharField already refuses NUL)."""
    if len(value.encode()) > MAX_KEY_BYTES:
        raise serializers.ValidationError(f"a key is at most {MAX_KEY_BYTES} bytes (UTF-8)")
    return value


class PresignSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=sorted(PRESIGN_OPERATIONS))
    keys = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False, validators=[_key]),
        min_length=1,
        max_length=1000,
    )
    expires_in = serializers.IntegerField(
        required=False, default=URL_LIFETIME, min_value=60, max_value=URL_LIFETIME
    )


class PresignedSerializer(serializers.Serializer):
    method = serializers.CharField()
    expires_in = serializers.IntegerField()
    urls = serializers.ListField(child=serializers.DictField(child=serializers.CharField()))


def url_lifetime(auth, requested: int = URL_LIFETIME) -> int:
    """Seconds a presigned URL may live: `requested`, at most an hour, never past the
    expiry of the token asking (request.auth)."""
    lifetime = min(requested, URL_LIFETIME)
    if isinstance(auth, ApiToken) and auth.expires_at is not None:
        left = int((auth.expires_at - timezone.now()).total_seconds())
        lifetime = min(lifetime, max(left, 1))
    return lifetime


def reachable_containers(request, project) -> set[tuple[str, str]] | None:
    """(alias, container) pairs a label-scoped token reaches: those its notebooks mount.

    None when the caller is not limited by a label selector (it reaches them all).
    """
    auth = request.auth
    if not isinstance(auth, ApiToken) or not auth.label_selector:
        return None
    notebooks = visible_notebooks(request, Notebook.objects.filter(project=project))
    return {
        (volume.alias, volume.container)
        for volumes in notebooks.values_list("volumes", flat=True)
        for volume in map(volume_from_dict, volumes or [])
        if isinstance(volume, ObjectVolume)
    }


def _unavailable(message: str) -> Unavailable:
    return Unavailable(message, code="datastore_unavailable")


class ContainerView(ProjectScopedMixin, APIView):
    """A container (bucket) of one of the project's S3 datastores."""

    def s3(self, alias: str, container: str):
        """The datastore's S3 client, once the alias and container name are known good."""
        datastore = find(Datastore.objects, project=self.project, alias=alias)
        if datastore is None:
            raise NotFound(
                f"No datastore named {alias!r} in project {self.project.name} "
                "(see GET .../datastores/)."
            )
        if datastore.type != Datastore.Type.S3:
            raise Invalid(
                f"datastore {alias!r} is a {datastore.type} datastore; objects live in s3 "
                "datastores",
                field="alias",
            )
        if not CONTAINER_NAME.match(container):
            raise Invalid(
                f"{container!r} is not a container name: 3 to 63 lowercase letters, digits, "
                "dots and dashes, starting and ending with a letter or digit",
                field="container",
            )
        reachable = reachable_containers(self.request, self.project)
        if reachable is not None and (alias, container) not in reachable:
            raise NotFound(
                f"No container {container!r} in datastore {alias!r} for this token: its label "
                f"selector {self.request.auth.label_selector!r} limits it to the containers "
                "that the notebooks it matches mount as volumes."
            )
        self.datastore = datastore
        # SigV4: the version every S3-compatible store accepts (AWS refuses v2 in new regions).
        return datastore.s3_client(signature_version="s3v4")

    def s3_error(self, exc: Exception, container: str) -> DomainError:
        """An S3 failure in the platform's words, naming the datastore and the container."""
        where = f"datastore {self.datastore.alias!r} ({self.datastore.endpoint or 'AWS'})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            if code in ("NoSuchBucket", "404"):
                return NotFound(f"No container named {container!r} in {where}.")
            if code == "NoSuchUpload":
                return NotFound(
                    f"No such multipart upload in container {container!r} of {where} "
                    "(completed, aborted, or expired)."
                )
            if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
                return Invalid(error.get("Message") or code, field="parts")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return _unavailable(
                    f"{where} refused its credentials for container {container!r} ({code}): "
                    "check the datastore's access and secret keys."
                )
            return _unavailable(
                f"{where} answered {code or 'an error'}: {error.get('Message') or exc}"
            )
        return _unavailable(f"Cannot reach {where}: {exc}")


class ObjectListView(ContainerView):
    """One page of a container's objects; follow `next_cursor` for the next."""

    @extend_schema(parameters=[ObjectQuerySerializer], responses=ObjectPageSerializer)
    def get(self, request, project, alias, container):
        query = ObjectQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        s3 = self.s3(alias, container)
        params = {"Bucket": container, "Prefix": q["prefix"], "MaxKeys": q["size"]}
        if q["delimiter"]:
            params["Delimiter"] = q["delimiter"]
        if q["cursor"]:
            params["ContinuationToken"] = q["cursor"]
        try:
            page = s3.list_objects_v2(**params)
        except (ClientError, BotoCoreError) as exc:
            raise self.s3_error(exc, container) from exc
        return Response(
            {
                "datastore": alias,
                "container": container,
                "prefix": q["prefix"],
                "results": [
                    {
                        "key": item["Key"],
                        "size": item["Size"],
                        "etag": item.get("ETag", "").strip('"'),
                        "last_modified": item["LastModified"].isoformat(),
                    }
                    for item in page.get("Contents", [])
                ],
                "prefixes": [p["Prefix"] for p in page.get("CommonPrefixes", [])],
                "next_cursor": page.get("NextContinuationToken")
                if page.get("IsTruncated")
                else None,
            }
        )


class PresignView(ContainerView):
    """URLs to read (`get`) or write (`put`) objects directly, valid `expires_in` seconds."""

    # `get` URLs are a read; the role is checked per method below.
    permission_classes = [
        p for p in ContainerView.permission_classes if p is not ProjectRolePermission
    ]

    @extend_schema(request=PresignSerializer, responses=PresignedSerializer)
    def post(self, request, project, alias, container):
        body = PresignSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        method, keys, expires_in = (
            body.validated_data[k] for k in ("method", "keys", "expires_in")
        )
        if method == "put" and self.role not in WRITE_ROLES:
            raise exceptions.PermissionDenied(ProjectRolePermission.message)
        expires_in = url_lifetime(request.auth, expires_in)
        s3 = self.s3(alias, container)
        try:
            s3.head_bucket(Bucket=container)  # a missing container is an error now, not per URL
        except (ClientError, BotoCoreError) as exc:
            raise self.s3_error(exc, container) from exc
        urls = [
            {
                "key": key,
                "url": s3.generate_presigned_url(
                    PRESIGN_OPERATIONS[method],
                    Params={"Bucket": container, "Key": key},
                    ExpiresIn=expires_in,
                ),
            }
            for key in keys
        ]
        return Response({"method": method, "expires_in": expires_in, "urls": urls})


class MultipartCreateSerializer(serializers.Serializer):
    key = serializers.CharField(trim_whitespace=False, validators=[_key])
    size = serializers.IntegerField(min_value=1, max_value=MAX_OBJECT_SIZE)


class MultipartUploadSerializer(serializers.Serializer):
    key = serializers.CharField(trim_whitespace=False, validators=[_key])
    upload_id = serializers.CharField(max_length=1024)


class PartSerializer(serializers.Serializer):
    part_number = serializers.IntegerField(min_value=1, max_value=MAX_PARTS)
    etag = serializers.CharField(max_length=256)


class MultipartCompleteSerializer(MultipartUploadSerializer):
    parts = PartSerializer(many=True, min_length=1, max_length=MAX_PARTS)


def part_size(size: int) -> int:
    """The smallest whole-MiB part size, at least MIN_PART_SIZE, that needs no more than
    MAX_PARTS parts."""
    mib = 1024**2
    return max(MIN_PART_SIZE, math.ceil(size / MAX_PARTS / mib) * mib)


class MultipartView(ContainerView):
    """Start an upload in parts: one presigned URL a part, each PUT in any order."""

    @extend_schema(request=MultipartCreateSerializer, responses={201: {"type": "object"}})
    def post(self, request, project, alias, container):
        body = MultipartCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key, size = body.validated_data["key"], body.validated_data["size"]
        s3 = self.s3(alias, container)
        try:
            upload_id = s3.create_multipart_upload(Bucket=container, Key=key)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            raise self.s3_error(exc, container) from exc
        each = part_size(size)
        lifetime = url_lifetime(request.auth)
        parts = [
            {
                "part_number": number,
                "url": s3.generate_presigned_url(
                    "upload_part",
                    Params={
                        "Bucket": container,
                        "Key": key,
                        "UploadId": upload_id,
                        "PartNumber": number,
                    },
                    ExpiresIn=lifetime,
                ),
            }
            for number in range(1, math.ceil(size / each) + 1)
        ]
        return Response(
            {
                "key": key,
                "upload_id": upload_id,
                "part_size": each,
                "expires_in": lifetime,
                "parts": parts,
            },
            status=status.HTTP_201_CREATED,
        )


class MultipartCompleteView(ContainerView):
    """Join the uploaded parts into the object."""

    @extend_schema(request=MultipartCompleteSerializer, responses={200: {"type": "object"}})
    def post(self, request, project, alias, container):
        body = MultipartCompleteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        upload = body.validated_data
        parts = sorted(upload["parts"], key=lambda p: p["part_number"])
        s3 = self.s3(alias, container)
        try:
            done = s3.complete_multipart_upload(
                Bucket=container,
                Key=upload["key"],
                UploadId=upload["upload_id"],
                MultipartUpload={
                    "Parts": [{"PartNumber": p["part_number"], "ETag": p["etag"]} for p in parts]
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise self.s3_error(exc, container) from exc
        return Response({"key": upload["key"], "etag": done.get("ETag", "").strip('"')})


class MultipartAbortView(ContainerView):
    """Give up an upload in parts: the object store drops the parts already sent."""

    @extend_schema(request=MultipartUploadSerializer, responses={204: None})
    def post(self, request, project, alias, container):
        body = MultipartUploadSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        s3 = self.s3(alias, container)
        try:
            s3.abort_multipart_upload(
                Bucket=container,
                Key=body.validated_data["key"],
                UploadId=body.validated_data["upload_id"],
            )
        except (ClientError, BotoCoreError) as exc:
            raise self.s3_error(exc, container) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)


# Under .../datastores/{alias}/containers/{container}/objects/
urlpatterns = [
    path("", ObjectListView.as_view(), name="datastore-objects"),
    path("presign/", PresignView.as_view(), name="datastore-objects-presign"),
    path("multipart/", MultipartView.as_view(), name="datastore-objects-multipart"),
    path(
        "multipart/complete/",
        MultipartCompleteView.as_view(),
        name="datastore-objects-multipart-complete",
    ),
    path(
        "multipart/abort/", MultipartAbortView.as_view(), name="datastore-objects-multipart-abort"
    ),
]
