"""The notebook list pages by cursor: every page's `next` and `previous` links carry
the (created_at, id) of its edge, so a walk reads no OFFSET, meets every notebook
once even when some share a creation time, and is not thrown off by notebooks
deleted behind it. `page=N` still works."""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from nbcloud.notebooks.models import Notebook
from support.factories import make_notebook

pytestmark = pytest.mark.django_db
LIST = "/api/v1/projects/alpha/notebooks/"


@pytest.fixture
def notebooks(alpha) -> list[str]:
    """25 notebooks, in the list's order; every third shares its creation time with the
    one before it (ties are broken by id)."""
    start = timezone.now() - timedelta(hours=1)
    made = []
    for i in range(25):
        notebook = make_notebook(alpha, name=f"n{i}")
        at = start + timedelta(seconds=i - (1 if i % 3 == 2 else 0))
        Notebook.objects.filter(pk=notebook.pk).update(created_at=at)
        made.append((at, str(notebook.pk)))
    return [pk for _, pk in sorted(made)]


def _path(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


def _walk(api, first: str, direction: str) -> tuple[list[list[str]], list[dict]]:
    pages, bodies, url = [], [], first
    while url:
        reply = api.get(url)
        assert reply.status_code == 200, reply.content
        body = reply.json()
        pages.append([nb["id"] for nb in body["results"]])
        bodies.append(body)
        url = body[direction] and _path(body[direction])
    return pages, bodies


def test_following_next_meets_every_notebook_once_in_order(alice_api, notebooks):
    pages, bodies = _walk(alice_api, f"{LIST}?size=10", "next")
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [pk for page in pages for pk in page] == notebooks
    assert all(body["count"] == 25 for body in bodies)
    for body in bodies[:-1]:
        query = parse_qs(urlsplit(body["next"]).query)
        assert set(query) == {"size", "after"}  # a cursor, no page number

    # And back from the last page through `previous`.
    back, _ = _walk(alice_api, _path(bodies[-1]["previous"]), "previous")
    assert [pk for page in reversed(back) for pk in page] == notebooks[:20]


def test_a_page_by_cursor_reads_no_offset(alice_api, notebooks):
    second = alice_api.get(f"{LIST}?size=10").json()["next"]
    with CaptureQueriesContext(connection) as queries:
        reply = alice_api.get(_path(second))
    assert [nb["id"] for nb in reply.json()["results"]] == notebooks[10:20]
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)


def test_page_numbers_still_work_and_lead_on_to_cursors(alice_api, notebooks):
    body = alice_api.get(f"{LIST}?size=10&page=2").json()
    assert [nb["id"] for nb in body["results"]] == notebooks[10:20]
    assert "after" in parse_qs(urlsplit(body["next"]).query)
    rest = alice_api.get(_path(body["next"])).json()
    assert [nb["id"] for nb in rest["results"]] == notebooks[20:]
    assert rest["next"] is None


def test_a_notebook_deleted_behind_the_walk_does_not_skip_another(alice_api, notebooks):
    first = alice_api.get(f"{LIST}?size=10").json()
    Notebook.objects.filter(pk=notebooks[0]).delete()  # someone deletes one already read
    second = alice_api.get(_path(first["next"])).json()
    assert [nb["id"] for nb in second["results"]] == notebooks[10:20]


def test_filters_hold_across_cursor_pages(alice_api, alpha, notebooks):
    Notebook.objects.filter(pk__in=notebooks[::2]).update(state="RUNNING")
    pages, _ = _walk(alice_api, f"{LIST}?size=4&state=RUNNING", "next")
    assert [pk for page in pages for pk in page] == notebooks[::2]


@pytest.mark.parametrize(
    "query",
    ["after=nonsense", "after=" + "W10", "before=bm9wZQ", "after=WyJ4IiwgInkiXQ"],
)
def test_a_cursor_that_is_not_one_is_refused_with_the_fix(alice_api, notebooks, query):
    reply = alice_api.get(f"{LIST}?{query}")
    assert reply.status_code == 400, reply.content
    name = query.split("=")[0]
    assert "use the 'next' or 'previous' link" in str(reply.json()), reply.json()
    assert name in str(reply.json())


def test_after_and_before_together_are_refused(alice_api, notebooks):
    link = alice_api.get(f"{LIST}?size=10").json()["next"]
    cursor = parse_qs(urlsplit(link).query)["after"][0]
    reply = alice_api.get(f"{LIST}?after={cursor}&before={cursor}")
    assert reply.status_code == 400
    assert "not both" in str(reply.json())
