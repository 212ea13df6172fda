"""Settings, read from the environment (12-factor, via django-environ).

One runtime: PostgreSQL (psycopg 3) and a Redis-protocol server (cache, Celery broker and
results, admission counters), always. ``DATABASE_URL`` / ``REDIS_URL`` name them; unset,
they name the embedded default's private servers under ``VAR_DIR`` (``config.embedded``),
which ``make serve`` / ``make test`` start from pip wheels. Reading settings starts nothing.
"""
import ipaddress
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import environ

from . import embedded
from .secret_key import secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()

DEBUG = env.bool("DEBUG", default=False)
# Never the documented development key with DEBUG off; unset, one generated once into
# VAR_DIR/secret_key (0600). The rules: config/secret_key.py.
SECRET_KEY = secret_key(configured=env.str("SECRET_KEY", default=""), debug=DEBUG, var_dir=VAR_DIR)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Redoc's assets, served by whitenoise (no CDN)
    "axes",
    "django_prometheus",  # HTTP and database metrics (django_http_*, django_db_*); /metrics: config.metrics
    "accounts",
    "limits",
    "embeddings",
    "metering",
    "billing",
    "administration",
    "batches",
    "console",
]

# Metrics on (default): django-prometheus's middleware and database wrapper, the platform's /v1
# series (config.metrics). Off only to measure what they cost (bench/observability_cost.py).
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "config.middleware.RequestIDMiddleware",
    # Log context of the request and the platform's /v1 metrics (config.metrics).
    "config.middleware.ObservabilityMiddleware",
    "config.middleware.OpenAIErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Binds the request, so a change made while serving it names its actor in the audit log.
    "accounts.audit.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into a 429 page.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
if not METRICS_ENABLED:
    MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("django_prometheus.")]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
# Unset: the embedded PostgreSQL's socket under VAR_DIR (config.embedded.database_url).
DATABASE_URL = env.str("DATABASE_URL", default="") or embedded.database_url(VAR_DIR)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise environ.ImproperlyConfigured(
        f"DATABASE_URL must name a PostgreSQL database (postgres://...), not {DATABASES['default']['ENGINE']}")
# django-prometheus's wrapper of the same backend: query counts and durations (django_db_*).
if METRICS_ENABLED:
    DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# No traceback per failed cache operation: config.cache logs an outage once at its start and end.
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = False

# --- Redis: cache, Celery ------------------------------------------------------
# Unset: the embedded Valkey's socket under VAR_DIR (config.embedded.redis_url).
REDIS_URL = env.str("REDIS_URL", default="") or embedded.redis_url(VAR_DIR)


def celery_redis_url(url: str) -> str:
    """``REDIS_URL`` as Celery and kombu spell it: ``unix:///path?db=N`` (redis-py's form) becomes
    ``redis+socket:///path?virtual_host=N``; other URLs are returned unchanged."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


CACHES = {
    "default": {
        "BACKEND": "config.cache.RedisCache",  # django-redis, reporting outages (config.redis_outage)
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="emb"),
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 2,  # seconds
            "SOCKET_TIMEOUT": 2,
            # A cache that is down is a miss, not a 500: API keys and limits are then read from
            # the database (admission has its own Redis-down policy, ADMISSION_REDIS_DOWN_POLICY).
            "IGNORE_EXCEPTIONS": True,
        },
    }
}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=celery_redis_url(REDIS_URL))
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=celery_redis_url(REDIS_URL))
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"  # vectors travel as base64 float32 bytes inside it (embeddings.tasks)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"

# --- Embedding workers (see embeddings/tasks.py, embeddings/serving/batching.py, platform/README.md) ------
# Requests with more tokens than this (special tokens included) are split into chunks and sent
# to the workers; smaller ones are encoded in the API process. 0: the API never loads a model.
# Default from bench/throughput.py on the 2-core CI machine (two runs): dispatching costs 4-6 ms
# per request (median, 1 input) against an encode rate of 1,900-2,800 tokens/s, i.e. 10% of the
# encode time of a ~70-160-token request. 128 keeps single queries (10-40 tokens), for which the round trip
# would be 20-50% of the latency, inline, and sends every real batch to the workers, where it
# shares forward passes with other requests and leaves the API's CPU free. On GPU workers the
# case for dispatching is stronger still (an API host's CPU is far slower than the GPU).
EMBEDDINGS_INLINE_MAX_TOKENS = env.int("EMBEDDINGS_INLINE_MAX_TOKENS", default=128)
# A lone request encoded in the API process has its usage record written on the process's metering
# thread while it encodes (metering.services.usage_record_written_alongside): the write's ~2 ms
# (a round trip and a commit, most of it waiting) overlaps the encode. Off: written after it.
EMBEDDINGS_METER_ALONGSIDE = env.bool("EMBEDDINGS_METER_ALONGSIDE", default=True)
# Requests of up to this many tokens are also encoded in the API process while it is busy (another
# of its requests encoding now or within the last second; a lone request still gets a worker's
# every core); -1: the engine's padded tokens per forward pass on CPU (2,048), 0 on CUDA (large
# work stays on the GPU worker's queue); 0: never. Under load a process's own one-thread engine
# beside the other's is ~10% more texts/s than one two-thread engine and saves the hop: on 2
# cores, C=8/32 clients of 16 inputs got 1.23x / 1.24x the texts/s of sending them to the
# worker (make serve, 0 vs -1).
EMBEDDINGS_INLINE_BUSY_MAX_TOKENS = env.int("EMBEDDINGS_INLINE_BUSY_MAX_TOKENS", default=-1)
# Tokens per dispatched chunk (one Celery task); a worker coalesces chunks of many requests.
EMBEDDINGS_CHUNK_TOKENS = env.int("EMBEDDINGS_CHUNK_TOKENS", default=8192)
# Seconds the API waits for all chunks of a request before answering 504; chunks still queued
# then expire (the worker drops them).
EMBEDDINGS_DISPATCH_TIMEOUT = env.float("EMBEDDINGS_DISPATCH_TIMEOUT", default=60.0)
# Real tokens one micro-batch may hold (the engine then cuts it into forward passes of
# EMBEDDINGS_BATCH_TOKENS padded tokens, sorted by length).
EMBEDDINGS_MAX_BATCH_TOKENS = env.int("EMBEDDINGS_MAX_BATCH_TOKENS", default=65536)
# Milliseconds an idle batcher waits after the first item for others to join. 0: an idle engine
# starts at once and batches form while it is busy, as TEI's and Infinity's queues do (a wait
# only adds latency to a lone request; bench/request_phases.py).
EMBEDDINGS_BATCH_WAIT_MS = env.float("EMBEDDINGS_BATCH_WAIT_MS", default=0.0)
EMBEDDINGS_QUEUE = "embeddings"
EMBEDDINGS_FLEX_QUEUE = "embeddings-flex"  # service_tier "flex": default-tier work overtakes it
BILLING_QUEUE = "billing"  # rollups and statement closing (beat's schedule)
# The Batch API's work (batches/): validation, chunks, finalization; below flex in the batcher.
BATCH_QUEUE = "embeddings-batch"
# Every queue a worker of `make serve` / `make worker` consumes unless QUEUES names some.
CELERY_PLATFORM_QUEUES = [EMBEDDINGS_QUEUE, EMBEDDINGS_FLEX_QUEUE, BATCH_QUEUE, BILLING_QUEUE]
# Seconds a delivered, unacknowledged chunk may stay with a worker before Redis hands it to
# another one. Must exceed the longest a chunk can be held (queued in the worker + its batch):
# that is bounded by the dispatch deadline, since expired chunks are dropped.
EMBEDDINGS_VISIBILITY_TIMEOUT = env.int(
    "EMBEDDINGS_VISIBILITY_TIMEOUT", default=max(300, int(EMBEDDINGS_DISPATCH_TIMEOUT * 2)))

# Overload (issue 11, item 5): a request is refused at once (503 server_overloaded, Retry-After)
# while more than this many chunks wait in its queue, instead of timing out a minute later
# (0: no bound). Size it to what the workers finish within EMBEDDINGS_DISPATCH_TIMEOUT.
EMBEDDINGS_MAX_QUEUE_DEPTH = env.int("EMBEDDINGS_MAX_QUEUE_DEPTH", default=1000)

CELERY_TASK_DEFAULT_QUEUE = EMBEDDINGS_QUEUE
CELERY_TASK_CREATE_MISSING_QUEUES = True
# Ack after the task ran; a chunk on a worker that died is delivered again (no lost work).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Threads pool: every reserved chunk waits in the worker's micro-batcher, so up to
# concurrency chunks (of many requests) can be coalesced into one forward pass.
CELERY_WORKER_POOL = env.str("CELERY_WORKER_POOL", default="threads")
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=64)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Remote control and events on: `celery -A config inspect ping` answers, Flower sees the workers and
# their tasks (platform/README.md, "Seeing it run").
CELERY_WORKER_ENABLE_REMOTE_CONTROL = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2  # seconds to open a broker connection
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": EMBEDDINGS_VISIBILITY_TIMEOUT,
    # Each worker looks for chunks of dead workers (unacked past the visibility timeout) every
    # this many seconds, and redelivers them (kombu's default scans only every 100 s).
    "unacked_restore_interval": env.int("EMBEDDINGS_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,  # seconds
}
# Publishing when the broker is down: give up after ~0.5 s (the API answers 503, never hangs).
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.3}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 2  # seconds (result backend)
CELERY_RESULT_EXPIRES = 300  # seconds: results nobody fetched are deleted by Redis
# Hard limits per chunk (prefork/solo pools enforce them; on the threads pool the task
# enforces its own deadline, see embeddings.tasks).
CELERY_TASK_TIME_LIMIT = int(EMBEDDINGS_DISPATCH_TIMEOUT) + 30
CELERY_TASK_SOFT_TIME_LIMIT = int(EMBEDDINGS_DISPATCH_TIMEOUT) + 15

# --- Auth, sessions, passwords -------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The console's sign-in (templates/console/login.html); the admin has its own at /admin/login/.
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "console:login"

# Sign-in throttling (django-axes), for the console and the admin: after
# AXES_FAILURE_LIMIT failed attempts for one username from one IP address, that
# pair is locked out for AXES_COOLOFF_TIME hours (429 page); a success resets the count.
# The attempts live in the database, so every API process sees the same counts.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_TIME", default=0.25)  # hours (15 minutes)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "console/locked_out.html"
AXES_VERBOSE = False

# --- HTTPS, cookies, Content-Security-Policy (production: platform/README.md) ---------------
# Off by default so `make serve` works on http://127.0.0.1; the documented production
# environment turns each on, and `manage.py check --deploy` is then clean (a test runs it).
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Probes of the load balancer or orchestrator reach the process over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)  # seconds; 31536000 = one year
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Behind a TLS-terminating proxy that sets it: "HTTP_X_FORWARDED_PROTO,https". Only set it when
# that proxy overwrites the header, or any client can claim HTTPS.
SECURE_PROXY_SSL_HEADER = env.tuple("SECURE_PROXY_SSL_HEADER", default=None)
if SECURE_PROXY_SSL_HEADER is not None and len(SECURE_PROXY_SSL_HEADER) != 2:
    raise environ.ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must be 'HEADER,value', e.g. "
                                       "'HTTP_X_FORWARDED_PROTO,https'")
# The console's policy (django-csp): its own static CSS and JS only, no inline script or
# style, no framing, no plugins. The Django admin and the API docs page (Redoc, which needs
# inline styles and blob: workers) are left to their own defaults.
INSTALLED_APPS.append("csp")
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "csp.middleware.CSPMiddleware")
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/admin/", "/api/docs/"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

# --- E-mail (console invitations: accounts/invitations.py) -------------------------
# django-environ's EMAIL_URL: smtp://, smtp+tls://user:pass@host:587, consolemail:// (the
# default: messages are printed by the web process), filemail:///path, memorymail://.
# Parts the URL leaves out (None) keep Django's defaults (EMAIL_PORT 25, no user).
vars().update({name: value for name, value in env.email_url("EMAIL_URL", default="consolemail://").items()
               if value is not None})
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="webmaster@localhost")
# Days an invitation link stays usable.
INVITATION_MAX_AGE_DAYS = env.int("INVITATION_MAX_AGE_DAYS", default=7)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # The Batch API's files (/v1/files), under VAR_DIR/files; any Django storage backend fits here
    # (django-storages: S3, GCS, Azure), read and written as streams only.
    "batch_files": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(VAR_DIR / "files")}},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- DRF / OpenAPI ------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["drf_orjson_renderer.renderers.ORJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["drf_orjson_renderer.parsers.ORJSONParser"],
    "EXCEPTION_HANDLER": "config.errors.openai_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    # OPTIONS is 405: DRF's metadata would show the views' docstrings (how they work inside).
    "DEFAULT_METADATA_CLASS": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Embeddings platform API",
    "DESCRIPTION": "OpenAI-compatible embeddings API (POST /v1/embeddings, GET /v1/models), and for admin keys "
                   "OpenAI's usage, costs and Admin API (/v1/organization/...).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema is public, like OpenAI's: any Authorization header (admin key, bad key) is ignored.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "REDOC_DIST": "SIDECAR",
}

# --- The platform ---------------------------------------------------------------
# Seconds a resolved API key is cached; revocation takes effect within this time
# in other processes (at once where the cache is shared, i.e. Redis).
API_KEY_CACHE_SECONDS = env.int("API_KEY_CACHE_SECONDS", default=5)
# `last_used_at` is written at most once per this many seconds per key (PostHog does the same).
API_KEY_LAST_USED_WRITE_SECONDS = env.int("API_KEY_LAST_USED_WRITE_SECONDS", default=60)
# Request bodies above this many bytes get 413 (2048 inputs x 256 tokens fit many times over).
EMBEDDINGS_MAX_BODY_BYTES = env.int("EMBEDDINGS_MAX_BODY_BYTES", default=32 * 1024 * 1024)
# Forward passes (inline and in workers) are cut to at most this many padded tokens each;
# 0: by device (CPU 2,048, CUDA 65,536: embeddings.serving.engine.DEFAULT_PASS_TOKENS, bench/pass_tokens.py).
EMBEDDINGS_BATCH_TOKENS = env.int("EMBEDDINGS_BATCH_TOKENS", default=0)
# torch intra-op threads per process; 0 keeps torch's default (the core count).
EMBEDDINGS_TORCH_THREADS = env.int("EMBEDDINGS_TORCH_THREADS", default=0)
# A request an API process encodes while none other of its requests is (C=1) runs on a second ONNX
# Runtime session of this many threads (-1: every core; 0: never), when no other API process of the
# host runs such a pass (one flock'd file, EMBEDDINGS_WIDE_SLOT): one text 14.9 instead of 21.0 ms
# on 2 cores (bench/vs_infinity.py). Loaded only where EMBEDDINGS_TORCH_THREADS is lower (the API).
EMBEDDINGS_WIDE_THREADS = env.int("EMBEDDINGS_WIDE_THREADS", default=-1)
EMBEDDINGS_WIDE_SLOT = Path(env.str("EMBEDDINGS_WIDE_SLOT", default=str(VAR_DIR / "run" / "wide-pass.lock")))
# Device for inference: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
EMBEDDINGS_DEVICE = env.str("EMBEDDINGS_DEVICE", default="auto")
# Engine backend: "auto" (default: torch fp16 on CUDA, ONNX Runtime on CPU, the fastest exact one
# on each: bench/engine_vs_raw.py --backend), "torch" or "onnx"; ONNX exports (fp32, exact) are made
# once per model under EMBEDDINGS_EXPORT_DIR, by the release step (it loads every model it registers).
EMBEDDINGS_BACKEND = env.str("EMBEDDINGS_BACKEND", default="auto")
EMBEDDINGS_EXPORT_DIR = Path(env.str("EMBEDDINGS_EXPORT_DIR", default=str(VAR_DIR / "models"))).resolve()
# Days the files kept there for model files or library versions no registered model uses stay after
# their last use (a load reading them) before the release step removes them (prune_model_exports).
EMBEDDINGS_EXPORT_KEEP_DAYS = env.float("EMBEDDINGS_EXPORT_KEEP_DAYS", default=7.0)

# --- Quotas and rate limits (limits.admission) ------------------------------------------------
# Where reservations live: a Redis shared by every API process.
ADMISSION_REDIS_URL = env.str("ADMISSION_REDIS_URL", default=REDIS_URL)
# Seconds to wait for that Redis before treating it as down.
ADMISSION_REDIS_TIMEOUT = env.float("ADMISSION_REDIS_TIMEOUT", default=1.0)
# Redis down: "closed" answers 503 + Retry-After (no request runs unmetered against a quota);
# "open" admits without limits (logged; usage is still metered in Postgres).
ADMISSION_REDIS_DOWN_POLICY = env.str("ADMISSION_REDIS_DOWN_POLICY", default="closed")
if ADMISSION_REDIS_DOWN_POLICY not in ("closed", "open"):
    raise ValueError("ADMISSION_REDIS_DOWN_POLICY must be 'closed' or 'open'")
ADMISSION_RETRY_AFTER_SECONDS = env.int("ADMISSION_RETRY_AFTER_SECONDS", default=5)
ADMISSION_KEY_PREFIX = env.str("ADMISSION_KEY_PREFIX", default="adm")
# Seconds each API process may keep a key's limits in memory. Every change sets a new limits
# version in Redis that each reservation checks atomically, so edits apply to the next request;
# this is only the bound for a change made while Redis was unreachable.
LIMITS_CACHE_SECONDS = env.int("LIMITS_CACHE_SECONDS", default=30)

# Structured logs (config/logs.py): JSON lines by default, LOG_FORMAT=text for a terminal; every
# line written while serving a request carries its request id, organization, project, key id, model.
from config.logs import log_format, logging_config  # noqa: E402

if log_format() == "json":  # (a LOG_FORMAT typo stops the start)
    import logging as _logging

    _logging.captureWarnings(True)  # Python's warnings as log lines too, not plain text on stderr
LOGGING = logging_config(env.str("LOG_LEVEL", default="INFO"))

# --- Metrics (config/metrics.py; platform/README.md, "Seeing it run") ----------------------------
# /metrics answers loopback clients (client address per TRUSTED_PROXIES) and, from anywhere,
# `Authorization: Bearer <METRICS_TOKEN>` when set; nothing else (no tenant key opens it).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# A host that runs workers but no web role serves /metrics on this port (0: none) and address.
METRICS_PORT = env.int("METRICS_PORT", default=0)
METRICS_ADDRESS = env.str("METRICS_ADDRESS", default="127.0.0.1")

# --- HTTP server (config/web.py, config/asgi.py) ----------------------------------
# Largest request body per route, in bytes: the longest matching path prefix wins, "" is every
# other path. Over it: 413 (the envelope under /v1) before the body is read whole. An upload
# route (e.g. a future /v1/files) gets its own, larger entry here.
REQUEST_BODY_MAX_BYTES = {
    "": env.int("REQUEST_BODY_MAX_BYTES", default=2621440),  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
    "/v1/embeddings": EMBEDDINGS_MAX_BODY_BYTES,
}
# No secret in any log line: every record of every logger has `sk-...` tokens masked.
from config.logs import install_secret_redaction  # noqa: E402

install_secret_redaction()

# --- Billing (rollups, statements; see billing/services.py) ---------------------
# Currency of prices and statements (ISO 4217, lower case as OpenAI's costs API writes it).
BILLING_CURRENCY = env.str("BILLING_CURRENCY", default="usd")
# The default model's first price per 1M input tokens, set by the release step (`make migrate`)
# when it has none: the list price hosted MiniLM-class models sell at. Changes: `set_price`.
BILLING_DEFAULT_MODEL_PRICE = Decimal(env.str("BILLING_DEFAULT_MODEL_PRICE", default="0.010000"))
# A model's batch price per 1M tokens, until it has one of its own (`set_price --batch`): this share
# of its standard price in effect (OpenAI's Batch API: 50% off).
BILLING_BATCH_PRICE_RATIO = Decimal(env.str("BILLING_BATCH_PRICE_RATIO", default="0.5"))
# Each rollup run re-rolls this many trailing hours, picking up records that arrived late.
BILLING_ROLLUP_LOOKBACK_HOURS = env.int("BILLING_ROLLUP_LOOKBACK_HOURS", default=3)
# Seconds between rollup runs (the usage API's 1h/1d buckets and the draft statement lag by at
# most this much plus one run). Each run re-rolls only the trailing lookback window.
BILLING_ROLLUP_INTERVAL_SECONDS = env.int("BILLING_ROLLUP_INTERVAL_SECONDS", default=60)
# A month's statements are closed (frozen) this many hours after the month ends.
BILLING_CLOSE_GRACE_HOURS = env.int("BILLING_CLOSE_GRACE_HOURS", default=6)
# Beat's record of last runs (the schedule itself is CELERY_BEAT_SCHEDULE below).
CELERY_BEAT_SCHEDULE_FILENAME = env.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule"))
# Celery's persistent scheduler plus beat's heartbeat in Redis (readiness reports it).
CELERY_BEAT_SCHEDULER = "config.heartbeats:BeatScheduler"
CELERY_BEAT_SCHEDULE = {
    "billing-rollup-usage": {
        "task": "billing.rollup_usage",
        "schedule": float(BILLING_ROLLUP_INTERVAL_SECONDS),
        "options": {"queue": BILLING_QUEUE, "expires": float(BILLING_ROLLUP_INTERVAL_SECONDS)},
    },
    "billing-close-statements": {
        "task": "billing.close_statements",
        "schedule": 3600.0,  # hourly; closing is idempotent and does nothing until the grace has passed
        "options": {"queue": BILLING_QUEUE, "expires": 3600.0},
    },
}


# --- Client addresses and failed-key throttling (config.client_address, accounts.throttling) ---
# Peers (IPs or CIDRs) whose X-Forwarded-For is believed: your load balancers / reverse proxies.
# Empty (default): the peer's own address is the client's. Every address-based rule uses it.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
for _entry in TRUSTED_PROXIES:  # a typo stops the start, not every request later (with a 500)
    try:
        ipaddress.ip_network(_entry.strip(), strict=False)
    except ValueError:
        raise environ.ImproperlyConfigured(f"TRUSTED_PROXIES: {_entry!r} is neither an IP address nor a CIDR") from None
AXES_CLIENT_IP_CALLABLE = "config.client_address.client_ip"
# After this many failed API-key authentications from one address (IPv6: one /64) within
# API_AUTH_FAILURE_WINDOW_SECONDS (from the first), its requests get 429 until the window ends.
# 100 a minute stops key guessing (measured: 167 guesses/s from one address) and leaves room for
# a client retrying with a revoked key about once a second.
API_AUTH_FAILURE_LIMIT = env.int("API_AUTH_FAILURE_LIMIT", default=100)
API_AUTH_FAILURE_WINDOW_SECONDS = env.int("API_AUTH_FAILURE_WINDOW_SECONDS", default=60)


# --- The Batch API (batches/; OpenAI's limits: "up to 50,000 requests, up to 200 MB", "at most
# 50,000 embedding inputs across all requests of a /v1/embeddings batch") ---------------------
BATCH_FILE_MAX_BYTES = env.int("BATCH_FILE_MAX_BYTES", default=200 * 1024 * 1024)
BATCH_MAX_REQUESTS = env.int("BATCH_MAX_REQUESTS", default=50_000)
BATCH_MAX_INPUTS = env.int("BATCH_MAX_INPUTS", default=50_000)
# Bytes of files (inputs and outputs) one organization may keep (OpenAI: 100 GB per organization).
BATCH_STORAGE_QUOTA_BYTES = env.int("BATCH_STORAGE_QUOTA_BYTES", default=100 * 1024**3)
# Seconds a file is kept after its creation unless `expires_after` says otherwise (OpenAI: batch
# files expire after 30 days); beat deletes expired files every BATCH_TICK_SECONDS.
BATCH_FILE_RETENTION_SECONDS = env.int("BATCH_FILE_RETENTION_SECONDS", default=30 * 86400)
# What the only completion window, "24h", lasts (s): a batch not done by then expires.
BATCH_COMPLETION_WINDOW_SECONDS = env.int("BATCH_COMPLETION_WINDOW_SECONDS", default=24 * 3600)
# Real tokens per chunk (one task; progress, redelivery and cancellation move by chunks).
BATCH_CHUNK_TOKENS = env.int("BATCH_CHUNK_TOKENS", default=32768)
# Real tokens per forward pass of batch work: interactive work waits at most one such pass.
BATCH_PASS_TOKENS = env.int("BATCH_PASS_TOKENS", default=4096)
# Chunks of one batch queued or running at once: the rest wait in the database, so a batch never
# fills a worker's slots (CELERY_WORKER_CONCURRENCY) or the broker ahead of interactive chunks.
BATCH_CHUNKS_IN_FLIGHT = env.int("BATCH_CHUNKS_IN_FLIGHT", default=2)
# A chunk sent this long ago (s) and not done is sent again (a lost message; writes are idempotent).
BATCH_CHUNK_RESEND_SECONDS = env.int("BATCH_CHUNK_RESEND_SECONDS", default=EMBEDDINGS_VISIBILITY_TIMEOUT + 60)
# Seconds between beat's batch ticks: expiry, file retention, lost chunks.
BATCH_TICK_SECONDS = env.int("BATCH_TICK_SECONDS", default=10)
REQUEST_BODY_MAX_BYTES["/v1/files"] = BATCH_FILE_MAX_BYTES + 1024 * 1024  # the multipart envelope
CELERY_BEAT_SCHEDULE["batches-tick"] = {
    "task": "batches.tick",
    "schedule": float(BATCH_TICK_SECONDS),
    "options": {"queue": BATCH_QUEUE, "expires": float(BATCH_TICK_SECONDS)},
}
