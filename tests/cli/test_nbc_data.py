"""`nbc datastore` and `nbc data`: objects moved through URLs the platform presigns.

The platform (uvicorn on the test database) holds the datastore's keys and
presigns; the CLI moves the bytes itself to and from a real S3 API
(moto_server) on loopback, and never sees the keys.
"""

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

from nbcloud.cli import data
from support.factories import make_s3_datastore

BUCKET = "cli-data"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def bucket(s3_bucket):
    return s3_bucket(BUCKET)


@pytest.fixture
def lake(nbc, as_alice, s3_endpoint, bucket) -> str:
    """An s3 datastore `lake` added through the CLI (secret asked for, as a person would)."""
    added = nbc(
        ["datastore", "add", "s3", "lake", "--endpoint", s3_endpoint, "--region", "us-east-1"]
        + ["--access-key", "testing"],
        as_alice,
        input="testing\n",
    )
    assert added.exit_code == 0, added.output
    assert "testing\n" not in added.stdout  # the secret is never echoed
    return "lake"


@pytest.fixture
def lake_row(alpha, s3_endpoint):
    """The datastore `lake` made directly (its secret never appears in a URL)."""
    store = make_s3_datastore(alpha, s3_endpoint, alias="lake", secret="the-secret-key")
    return store


def _tree(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_upload_list_and_download_through_presigned_urls(nbc, as_alice, lake, bucket, tmp_path):
    src = tmp_path / "src"
    (src / "images" / "cats").mkdir(parents=True)
    (src / "images" / "cats" / "tom.bin").write_bytes(os.urandom(3 * data.CHUNK + 17))
    (src / "images" / "readme.txt").write_text("hello\n")
    (src / "empty.txt").write_bytes(b"")
    up = nbc(
        ["data", "upload", lake, BUCKET, str(src / "images"), str(src / "empty.txt")]
        + ["--prefix", "v2/", "--jobs", "2"],
        as_alice,
    )
    assert up.exit_code == 0, up.output
    assert "Uploaded 3 of 3 files" in up.stderr

    # What the object store holds, asked with its own keys.
    stored = {o["Key"]: o["Size"] for o in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert stored == {
        "v2/images/cats/tom.bin": 3 * data.CHUNK + 17,
        "v2/images/readme.txt": 6,
        "v2/empty.txt": 0,
    }

    listed = nbc(["data", "list", lake, BUCKET, "--prefix", "v2/images/", "-o", "json"], as_alice)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["key"], r["size"]) for r in rows] == [
        ("v2/images/cats/tom.bin", 3 * data.CHUNK + 17),
        ("v2/images/readme.txt", 6),
    ]
    assert all(r["etag"] and r["last_modified"] for r in rows)
    as_yaml = yaml.safe_load(nbc(["data", "list", lake, BUCKET, "-o", "yaml"], as_alice).stdout)
    assert len(as_yaml) == 3
    table = nbc(["data", "list", lake, BUCKET], as_alice)
    assert "v2/images/readme.txt" in table.stdout and "3 objects" in table.stderr

    dest = tmp_path / "dest"
    down = nbc(["data", "download", lake, BUCKET, "--prefix", "v2/", "--to", str(dest)], as_alice)
    assert down.exit_code == 0, down.output
    assert "Downloaded 3 of 3 files" in down.stderr
    assert _tree(dest / "v2") == _tree(src)
    assert not list(dest.rglob("*.nbc-partial"))

    one = nbc(
        ["data", "download", lake, BUCKET, "v2/images/readme.txt", "-d", str(tmp_path / "one")],
        as_alice,
    )
    assert one.exit_code == 0, one.output
    assert (tmp_path / "one" / "v2" / "images" / "readme.txt").read_text() == "hello\n"


def test_a_read_token_may_list_and_download_but_not_upload(nbc, as_bob, lake, bucket, tmp_path):
    bucket.put_object(Bucket=BUCKET, Key="shared.txt", Body=b"for everyone")
    assert nbc(["datastore", "list"], as_bob).exit_code == 0
    assert (
        json.loads(nbc(["data", "list", lake, BUCKET, "-o", "json"], as_bob).stdout)[0]["key"]
        == "shared.txt"
    )
    down = nbc(["data", "download", lake, BUCKET, "shared.txt", "--to", str(tmp_path)], as_bob)
    assert down.exit_code == 0, down.output
    assert (tmp_path / "shared.txt").read_bytes() == b"for everyone"

    file = tmp_path / "mine.txt"
    file.write_text("no")
    refused = nbc(["data", "upload", lake, BUCKET, str(file)], as_bob)
    assert refused.exit_code == 1
    assert (
        "This action needs the operator role; your role on this project is read-only."
        in refused.stderr
    )
    assert "Traceback" not in refused.output
    assert [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["shared.txt"]
    gone = nbc(["datastore", "delete", lake, "--force"], as_bob)
    assert gone.exit_code == 1 and "operator role" in gone.stderr


def test_errors_name_the_datastore_the_container_and_the_object(
    nbc, as_alice, lake, bucket, tmp_path
):
    missing = nbc(["data", "list", lake, "no-such-bucket"], as_alice)
    assert missing.exit_code == 1
    assert "No container named 'no-such-bucket' in datastore 'lake'" in missing.stderr
    unknown = nbc(["data", "list", "nope", BUCKET], as_alice)
    assert unknown.exit_code == 1 and "No datastore named 'nope' in project alpha" in unknown.stderr
    bad = nbc(["data", "list", lake, "Bad_Name"], as_alice)
    assert bad.exit_code == 1 and "'Bad_Name' is not a container name" in bad.stderr

    no_key = nbc(["data", "download", lake, BUCKET, "absent.txt", "--to", str(tmp_path)], as_alice)
    assert no_key.exit_code == 1 and "absent.txt: no such object" in no_key.stderr
    assert not (tmp_path / "absent.txt").exists()

    # A key that would land outside the folder is refused; the others come down.
    bucket.put_object(Bucket=BUCKET, Key="ok.txt", Body=b"ok")
    bucket.put_object(Bucket=BUCKET, Key="../escape.txt", Body=b"no")
    dest = tmp_path / "dest"
    escaped = nbc(["data", "download", lake, BUCKET, "--to", str(dest)], as_alice)
    assert escaped.exit_code == 1, escaped.output
    assert "../escape.txt: this key would be written outside" in escaped.stderr
    assert (dest / "ok.txt").read_bytes() == b"ok" and not (tmp_path / "escape.txt").exists()

    dead = ["datastore", "add", "s3", "dead", "--endpoint", "http://127.0.0.1:9"]
    assert nbc([*dead, "--access-key", "k", "--secret-key", "s"], as_alice).exit_code == 0
    unreachable = nbc(["data", "upload", "dead", BUCKET, str(dest / "ok.txt")], as_alice)
    assert unreachable.exit_code == 1
    assert "Cannot reach datastore 'dead' (http://127.0.0.1:9)" in unreachable.stderr

    nothing = nbc(["data", "upload", lake, BUCKET, str(tmp_path / "absent")], as_alice)
    assert nothing.exit_code == 2 and "is not a file or a folder" in nothing.output


def test_datastores_add_list_delete(nbc, as_alice, tmp_path):
    git = nbc(
        ["datastore", "add", "git", "code", "--host", "github.com", "--username", "alice"]
        + ["--password", "s3cret", "-o", "json"],
        as_alice,
    )
    assert git.exit_code == 0, git.output
    assert json.loads(git.stdout)["host"] == "github.com" and "s3cret" not in git.stdout
    twice = nbc(["datastore", "add", "git", "code", "--host", "github.com"], as_alice)
    assert twice.exit_code == 1 and "already has a datastore 'code'" in twice.stderr
    no_key = nbc(["datastore", "add", "s3", "x"], as_alice)
    assert no_key.exit_code == 2 and "--access-key" in no_key.output

    listed = nbc(["datastore", "list"], as_alice)
    assert "code" in listed.stdout and "github.com" in listed.stdout
    not_s3 = nbc(["data", "list", "code", BUCKET], as_alice)
    assert not_s3.exit_code == 1 and "is a git datastore" in not_s3.stderr

    asked = nbc(["datastore", "delete", "code"], as_alice, input="n\n")
    assert asked.exit_code == 1 and "Delete datastore code" in asked.output
    assert nbc(["datastore", "delete", "code", "--force"], as_alice).exit_code == 0
    assert json.loads(nbc(["datastore", "list", "-o", "json"], as_alice).stdout) == []


def test_presign_api_checks_its_input_and_its_tenant(
    alice_api, charlie_api, bob_api, lake_row, s3_endpoint, bucket
):
    url = f"/api/v1/projects/alpha/datastores/lake/containers/{BUCKET}/objects/"
    assert alice_api.get(url).json()["results"] == []
    assert charlie_api.get(url).status_code == 404
    presign = url + "presign/"
    too_many = alice_api.post(presign, {"method": "get", "keys": ["k"] * 1001}, format="json")
    assert too_many.status_code == 400 and "keys" in too_many.json()["fields"]
    bad = alice_api.post(presign, {"method": "delete", "keys": ["k"]}, format="json")
    assert bad.status_code == 400 and "method" in bad.json()["fields"]
    long_key = alice_api.post(presign, {"method": "put", "keys": ["é" * 513]}, format="json")
    assert long_key.status_code == 400 and "1024 bytes" in long_key.json()["message"]
    assert bob_api.post(presign, {"method": "put", "keys": ["k"]}, format="json").status_code == 403
    answer = bob_api.post(
        presign, {"method": "get", "keys": ["a b/c.txt"], "expires_in": 60}, format="json"
    ).json()
    assert answer["expires_in"] == 60 and answer["urls"][0]["key"] == "a b/c.txt"
    assert answer["urls"][0]["url"].startswith(f"{s3_endpoint}/{BUCKET}/a%20b/c.txt?")
    assert "X-Amz-Signature=" in answer["urls"][0]["url"]  # SigV4
    assert "the-secret-key" not in answer["urls"][0]["url"]

    # Pages follow a cursor.
    for i in range(5):
        bucket.put_object(Bucket=BUCKET, Key=f"k{i}", Body=b"x")
    first = alice_api.get(url, {"size": 2}).json()
    assert [o["key"] for o in first["results"]] == ["k0", "k1"] and first["next_cursor"]
    second = alice_api.get(url, {"size": 2, "cursor": first["next_cursor"]}).json()
    assert [o["key"] for o in second["results"]] == ["k2", "k3"]
    folders = alice_api.get(url, {"delimiter": "/", "prefix": ""}).json()
    assert folders["prefixes"] == [] and len(folders["results"]) == 5


def test_store_errors_read_as_sentences():
    denied = httpx.Response(
        403,
        text="<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Request has expired"
        "</Message></Error>",
    )
    assert str(data._store_error(denied, "k")) == (
        "k: the object store answered HTTP 403 (AccessDenied: Request has expired)"
    )
    assert str(data._store_error(httpx.Response(502, text=""), "k")) == (
        "k: the object store answered HTTP 502 (Bad Gateway)"
    )
    with pytest.raises(data.TransferFailed, match="outside"):
        data._local_path(Path("/tmp/x"), "a/../../b")


def test_a_large_file_goes_up_in_parts(nbc, as_alice, lake, bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MULTIPART_THRESHOLD", 1024**2)  # parts are 8 MiB at least
    big = tmp_path / "big.bin"
    content = os.urandom(8 * 1024**2 + 17)
    big.write_bytes(content)
    small = tmp_path / "small.txt"
    small.write_text("whole")
    up = nbc(["data", "upload", lake, BUCKET, str(big), str(small)], as_alice)
    assert up.exit_code == 0, up.output
    assert "Uploaded 2 of 2 files" in up.stderr
    stored = bucket.get_object(Bucket=BUCKET, Key="big.bin")
    assert stored["Body"].read() == content
    assert stored["ETag"].strip('"').endswith("-2")  # joined from two parts
    assert bucket.get_object(Bucket=BUCKET, Key="small.txt")["Body"].read() == b"whole"
    assert bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_multipart_api_refuses_bad_parts_and_aborts(alice_api, bob_api, lake_row, bucket):
    url = f"/api/v1/projects/alpha/datastores/lake/containers/{BUCKET}/objects/multipart/"
    body = {"key": "huge.bin", "size": 10 * 1024**4}
    too_big = alice_api.post(url, body, format="json")
    assert too_big.status_code == 400 and "size" in too_big.json()["fields"]
    assert bob_api.post(url, {**body, "size": 1}, format="json").status_code == 403

    # 1 TiB: 10,000 parts at most, whole MiB each.
    started = alice_api.post(url, {**body, "size": 1024**4}, format="json")
    assert started.status_code == 201, started.json()
    upload = started.json()
    assert len(upload["parts"]) <= 10_000 and upload["part_size"] % 1024**2 == 0
    assert upload["part_size"] * len(upload["parts"]) >= 1024**4
    ids = {"key": "huge.bin", "upload_id": upload["upload_id"]}
    bad = alice_api.post(
        url + "complete/", {**ids, "parts": [{"part_number": 1, "etag": "nope"}]}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid", bad.json()
    assert alice_api.post(url + "abort/", ids, format="json").status_code == 204
    assert bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    gone = alice_api.post(url + "abort/", ids, format="json")
    assert gone.status_code == 404 and "No such multipart upload" in gone.json()["message"]


def test_transfers_retry_a_5xx_and_a_dropped_connection_then_give_up(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "RETRY_DELAY", 0)
    file = tmp_path / "f.bin"
    file.write_bytes(os.urandom(2 * data.CHUNK + 5))
    answers = iter(["503", "drop", "ok"])
    received: list[int] = []

    def store(request):
        answer = next(answers)
        body = request.read()
        if answer == "drop":
            raise httpx.ReadError("connection reset by peer")
        if answer == "503":
            return httpx.Response(503, text="<Error><Code>SlowDown</Code></Error>")
        received.append(len(body))
        return httpx.Response(200, headers={"ETag": '"abc"'})

    moved: list[int] = []
    piece = data.Piece(data.Item("k", file, file.stat().st_size), "http://store/k")
    with httpx.Client(transport=httpx.MockTransport(store)) as http:
        data.upload_piece(http, piece, moved.append, lambda n: None)
    assert received == [2 * data.CHUNK + 5] and piece.etag == '"abc"'
    assert sum(moved) == 2 * data.CHUNK + 5  # bytes of failed tries taken back

    def down(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with (
        httpx.Client(transport=httpx.MockTransport(down)) as http,
        pytest.raises(data.TransferFailed, match="k: cannot reach the object store: connection"),
    ):
        data.upload_piece(http, piece, moved.append, lambda n: None)
