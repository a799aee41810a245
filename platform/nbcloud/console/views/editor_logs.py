"""A notebook's editor logs, from where the API's `logs` action reads them (the copy its
host ships): the one place the console asks, so a change of source changes both."""

from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook


def editor_logs(notebook: Notebook, tail: int) -> str:
    """The last `tail` lines of the notebook's editor log."""
    return services.editor_log(notebook, tail)["logs"]
