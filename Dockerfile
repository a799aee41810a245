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
# The data directory (0700, with its static folder) is made in the image, so every
# container (and the named volumes mounted there) starts with it; the key comes from
# SECRET_KEY at run time, never from the image. Web, workers and beat make it again
# as they start (nbcloud.datadir), e.g. over a host's bind mount.
RUN python -m compileall -q platform workers \
 && SECRET_KEY=build python manage.py setup -v 0 \
 && SECRET_KEY=build python manage.py check

EXPOSE 8000 9101
# tini (from the base) reaps what celery and uvicorn leave behind.
CMD ["uvicorn", "nbcloud.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
