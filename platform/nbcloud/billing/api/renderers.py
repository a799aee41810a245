import csv
import io

from rest_framework.renderers import BaseRenderer

from nbcloud.billing import usage


class CSVRenderer(BaseRenderer):
    """Renders a usage report's rows (or an error) as CSV: `?format=csv`."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        rows = data.get("rows", [data]) if isinstance(data, dict) else data
        fieldnames = list(rows[0]) if rows else []
        if not rows and isinstance(data, dict) and data.get("group_by") in usage.GROUPS:
            fieldnames = usage.columns(data["group_by"])  # the header, even with no rows
        out = io.StringIO()
        if fieldnames:
            writer = csv.DictWriter(out, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().encode()
