"""Capabilities: what can be asked for (OVH's /capabilities)."""

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from nbcloud.catalog.services import catalog


def _framework(fw) -> dict:
    return {
        "id": fw.id,
        "name": fw.name,
        "description": fw.description,
        "doc_url": fw.doc_url,
        "editors": list(fw.editors),
        "versions": [v.version for v in fw.versions],
        "default_version": fw.default_version.version,
    }


def _editor(editor) -> dict:
    return {"id": editor.id, "name": editor.name, "doc_url": editor.doc_url}


class CapabilityView(APIView):
    kind: str = ""

    def items(self) -> list[dict]:
        cat = catalog()
        return {
            "frameworks": lambda: [_framework(f) for f in cat.frameworks.values()],
            "editors": lambda: [_editor(e) for e in cat.editors.values()],
            "flavors": lambda: [asdict(f) for f in cat.flavors.values()],
            "regions": lambda: [asdict(r) for r in cat.regions.values()],
        }[self.kind]()

    @extend_schema(responses={200: {"type": "array", "items": {"type": "object"}}})
    def get(self, request):
        return Response(self.items())
