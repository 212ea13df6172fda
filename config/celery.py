"""The Celery app. Workers: ``celery -A config worker`` (``make worker``; see platform/README.md).

Configuration comes from Django settings under the ``CELERY_`` namespace (queues
``embeddings`` and ``embeddings-flex``, late acks, the threads pool, the Redis
visibility timeout, time limits). Tasks live in ``embeddings/tasks.py`` and
``billing/tasks.py``. Workers and beat write heartbeats (``config.heartbeats``).
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Every worker writes its heartbeat to Redis (config.heartbeats: the platform's one "alive").
from config.heartbeats import WorkerHeartbeat  # noqa: E402 - needs the app's settings namespace set

app.steps["worker"].add(WorkerHeartbeat)
