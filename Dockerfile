# The platform's own image: web (API + gateway), workers, beat and flower all run it
# (compose/docker-compose.yml). It builds on the locally made base image
# (environments/base/build-base.sh: Debian bookworm's Python 3.11, no registry) and
# needs no network: `make image` first collects the project's wheels into
# var/image-wheels on the build machine, and the build installs from those alone.
#   make image            # nbcloud/platform:latest
ARG BASE=nbcloud/base:latest
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/nbcloud/platform:/opt/nbcloud \
    DJANGO_SETTINGS_MODULE=nbcloud.settings \
    NBCLOUD_DATA_DIR=/var/lib/nbcloud/data \
    NBCLOUD_WORKSPACES_DIR=/var/lib/nbcloud/workspaces

# Dependencies first: this layer is rebuilt only when the wheels change.
COPY var/image-wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
      -r /tmp/wheels/requirements.txt \
 && rm -rf /tmp/wheels

WORKDIR /opt/nbcloud
COPY manage.py pyproject.toml ./
COPY environments environments
COPY workers workers
COPY platform platform
RUN python -m compileall -q platform workers \
 && SECRET_KEY=build NBCLOUD_DATA_DIR=/tmp/build python manage.py check \
 && rm -rf /tmp/build

EXPOSE 8000 9101
# tini (from the base) reaps what celery and uvicorn leave behind.
CMD ["uvicorn", "nbcloud.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
