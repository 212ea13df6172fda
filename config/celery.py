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

# Every published message carries its send time (the queues' oldest-message age, config.platform_state).
from celery.signals import before_task_publish, worker_init  # noqa: E402

from config.platform_state import stamp_sent_at  # noqa: E402

before_task_publish.connect(stamp_sent_at, weak=False)


@worker_init.connect(weak=False)
def serve_metrics_port(**kwargs) -> None:
    """A host that runs workers but no web role: ``/metrics`` on ``METRICS_PORT`` (config.metrics)."""
    from django.conf import settings

    if settings.METRICS_PORT:
        from config.metrics import serve_metrics_port as serve

        serve(settings.METRICS_PORT, settings.METRICS_ADDRESS)
