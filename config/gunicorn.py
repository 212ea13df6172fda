"""gunicorn settings for the API (``gunicorn -c config/gunicorn.py config.wsgi``).

Environment: ``HOST`` (127.0.0.1), ``PORT`` (8000), ``WEB_CONCURRENCY`` (worker
processes, default 2), ``WEB_THREADS`` (threads per worker, default 16: concurrent
requests of one process share forward passes through its micro-batcher, so a process
needs threads enough for a batch to form),
``EMBEDDINGS_TORCH_THREADS`` (torch threads per worker; default: cores / workers,
so inline encodes of concurrent workers do not oversubscribe the CPU).
"""
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "16"))
worker_class = "gthread"
timeout = int(os.environ.get("WEB_TIMEOUT", "120"))  # seconds; a 2048-input inline batch on a slow CPU
graceful_timeout = 30
keepalive = 5
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): a second
# server on the host (tests, another checkout) would take it over. Nothing here uses it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
# No Authorization header in the access log: the default format has none, kept explicit here.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'

os.environ.setdefault("EMBEDDINGS_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def post_worker_init(worker):
    """Load the active models' tokenizers before the worker takes requests (no cold first request),
    and their weights only where requests may be encoded here (``EMBEDDINGS_INLINE_MAX_TOKENS > 0``):
    with the threshold at 0 the API process never loads a model."""
    from embeddings.services import warm_up

    warm_up()
