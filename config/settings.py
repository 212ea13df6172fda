"""Settings, read from the environment (12-factor, via django-environ).

Two ways to run:

* Embedded default (no ``DATABASE_URL``/``REDIS_URL``): SQLite under ``var/``, a
  local-memory cache, and Celery tasks run eagerly in the API process.
* Production / CI: ``DATABASE_URL`` (Postgres via psycopg 3) and ``REDIS_URL``
  (Celery broker and result backend, Django cache, rate-limit counters).
"""
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-change-me-in-production-0123456789abcdef")
DEBUG = env.bool("DEBUG", default=False)
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
    "accounts",
    "embeddings",
    "billing",
]

MIDDLEWARE = [
    "config.middleware.RequestIDMiddleware",
    "config.middleware.OpenAIErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into a 429 page.
    "axes.middleware.AxesMiddleware",
]

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
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves threads of one process: wait for the write lock
    # instead of failing with "database is locked".
    # WAL lets readers run beside the writer; synchronous=NORMAL drops the fsync per commit
    # (durable at checkpoints; the embedded default is for trying it out, not production).
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20,  # seconds
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- Redis: cache, Celery ------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
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
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL or "cache+memory://")
# Embedded default: no broker, so tasks run in the calling process (same code path).
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"

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

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every start when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
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
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Embeddings platform API",
    "DESCRIPTION": "OpenAI-compatible embeddings API (POST /v1/embeddings, GET /v1/models).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
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
# Inline forward passes are cut to at most this many (padded) tokens each.
EMBEDDINGS_BATCH_TOKENS = env.int("EMBEDDINGS_BATCH_TOKENS", default=16384)
# torch intra-op threads per process; 0 keeps torch's default (the core count).
EMBEDDINGS_TORCH_THREADS = env.int("EMBEDDINGS_TORCH_THREADS", default=0)
# Device for inference: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
EMBEDDINGS_DEVICE = env.str("EMBEDDINGS_DEVICE", default="auto")

# --- Quotas and rate limits (accounts.admission) ------------------------------------------------
# Where reservations live: a Redis shared by every API process; empty = in-process (per process).
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
# this is only the bound for a change made while Redis was unreachable. The embedded default
# reads the limits from the database on every request (0).
LIMITS_CACHE_SECONDS = env.int("LIMITS_CACHE_SECONDS", default=30 if REDIS_URL else 0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "django_redis.cache": {"level": "WARNING"},
    },
}

# --- Billing (rollups, statements; see billing/services.py) ---------------------
# Currency of prices and statements (ISO 4217, lower case as OpenAI's costs API writes it).
BILLING_CURRENCY = env.str("BILLING_CURRENCY", default="usd")
# Each rollup run re-rolls this many trailing hours, picking up records that arrived late.
BILLING_ROLLUP_LOOKBACK_HOURS = env.int("BILLING_ROLLUP_LOOKBACK_HOURS", default=3)
# Seconds between rollup runs (the usage API's 1h/1d buckets lag by at most this much).
BILLING_ROLLUP_INTERVAL_SECONDS = env.int("BILLING_ROLLUP_INTERVAL_SECONDS", default=300)
# A month's statements are closed (frozen) this many hours after the month ends.
BILLING_CLOSE_GRACE_HOURS = env.int("BILLING_CLOSE_GRACE_HOURS", default=6)
# Beat's record of last runs (the schedule itself is CELERY_BEAT_SCHEDULE below).
CELERY_BEAT_SCHEDULE_FILENAME = env.str("CELERY_BEAT_SCHEDULE_FILENAME", default=str(VAR_DIR / "celerybeat-schedule"))
CELERY_BEAT_SCHEDULE = {
    "billing-rollup-usage": {
        "task": "billing.rollup_usage",
        "schedule": float(BILLING_ROLLUP_INTERVAL_SECONDS),
        "options": {"queue": "billing", "expires": float(BILLING_ROLLUP_INTERVAL_SECONDS)},
    },
    "billing-close-statements": {
        "task": "billing.close_statements",
        "schedule": 3600.0,  # hourly; closing is idempotent and does nothing until the grace has passed
        "options": {"queue": "billing", "expires": 3600.0},
    },
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The rollups' unique constraints treat NULL api keys as equal (Postgres 15+ NULLS NOT
    # DISTINCT); SQLite cannot, which only matters for rows of deleted keys.
    SILENCED_SYSTEM_CHECKS = ["models.W047"]
