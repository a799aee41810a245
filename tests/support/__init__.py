"""What the tests share, imported as `support.<module>` (pyproject puts tests/ on the path).

- `support.fixtures`: the pytest plugin with the shared fixtures (people, the
  real servers, runtimes, Docker, git servers); tests/conftest.py registers it.
- `support.paths`: where the project and the test data are.
- `support.factories`: rows as the API would make them (notebooks, hosts,
  datastores) and API clients.
- `support.services`: real processes: Celery workers, host workers, the
  services' environment.
- `support.waiting`: `wait_for`, and `wait_state` / `wait_row_state` for notebooks.
- `support.editors`: a notebook's URL and a JupyterLab kernel driven over its API.
- `support.gpu`: NVML answering from a real H100's recorded readings.
- `support.security`: what the attacks on root's file work share.
"""
