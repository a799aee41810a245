"""What the tests share, imported as `support.<module>` (pyproject puts tests/ on the
path); docs/testing.md says how the suite is laid out.

- `support.fixtures`: the pytest plugin with the shared fixtures (people, the
  real servers, runtimes, Docker, git servers); tests/conftest.py registers it.
- `support.security`: a plugin too: what the attacks on root's file work share.
- `support.factories`: rows as the API would make them, and API clients.
- `support.services`: real processes: Celery workers, host workers, the
  environment every service started here shares.
- `support.waiting`: `wait_for`, and `wait_state` / `wait_row_state` for notebooks.
- `support.editors`: a notebook's URL, and a JupyterLab kernel driven over its API.
- `support.gpu`: NVML answering from a real H100's recorded readings.
- `support.metrics`, `support.network`, `support.ovhai_sdk`, `support.paths`:
  Prometheus expositions, a proxy that cuts connections, the `ovhai` SDK
  pointed at nbcloud, where the project is.
"""
