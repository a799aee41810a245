"""A notebook's editor logs, from wherever the API's `logs` action reads them: the one
place the console asks, so a change of source changes both."""

from nbcloud.notebooks.models import Notebook


def editor_logs(notebook: Notebook, tail: int) -> str:
    """The last `tail` lines of the notebook's editor log."""
    from workers.lifecycle import runtime_for

    return runtime_for(notebook).logs(tail)
