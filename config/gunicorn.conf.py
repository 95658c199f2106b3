"""gunicorn settings for the HTTP shim in containers.

    gunicorn -c config/gunicorn.conf.py api_shim.wsgi:app

``heimdall-inference api`` sets the same values itself from the HEIMDALL_* settings.
"""

import os

from inference_worker.core.features import load_signal_maths

load_signal_maths()  # in the master, before it forks: every process inherits it

host = os.environ.get("HEIMDALL_API_HOST", "0.0.0.0")
bind = f"{host}:{os.environ.get('HEIMDALL_API_PORT', '8003')}"
workers = int(os.environ.get("HEIMDALL_API_WORKERS", "2"))
threads = int(os.environ.get("HEIMDALL_API_THREADS", "16"))
worker_class = "gthread" if threads > 1 else "sync"
timeout = 60
graceful_timeout = 30  # SIGTERM lets requests in flight finish
accesslog = "-"


def post_worker_init(worker):  # each process beats in Redis: `heimdall-inference check` finds it
    from api_shim.presence import start_beating

    start_beating(worker.wsgi, host, int(bind.rsplit(":", 1)[1]))


def worker_exit(server, worker):
    from api_shim.presence import stop_beating

    stop_beating(worker.wsgi)
