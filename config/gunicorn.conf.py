"""gunicorn settings for the HTTP shim in containers.

    gunicorn -c config/gunicorn.conf.py api_shim.wsgi:app

``heimdall-inference api`` sets the same values itself from the HEIMDALL_* settings.
"""

import os

from api_shim import presence
from inference_worker.core.features import load_signal_maths
from inference_worker.urls import host_port

load_signal_maths()  # in the master, before it forks: every process inherits it

host = os.environ.get("HEIMDALL_API_HOST", "0.0.0.0")
port = int(os.environ.get("HEIMDALL_API_PORT", "8003"))
bind = host_port(host, port)  # [::1]:8003 for an IPv6 address
workers = int(os.environ.get("HEIMDALL_API_WORKERS", "2"))
threads, worker_class = presence.server_threads(  # waits for jobs have threads of their own
    int(os.environ.get("HEIMDALL_API_THREADS", "16")),
    int(os.environ.get("HEIMDALL_API_MAX_WAITS", "64")),
)
timeout = 60
graceful_timeout = 30  # SIGTERM lets requests in flight finish
control_socket = presence.control_socket(port)  # one of this port's for `gunicornc -s PATH`
accesslog = "-"


def post_worker_init(worker):  # beats in Redis (`heimdall-inference check`), ends waits on SIGTERM
    from api_shim.presence import process_started

    process_started(worker.wsgi, host, port)


def worker_exit(server, worker):  # stops beating, closes its broker connections
    from api_shim.presence import process_exiting

    process_exiting(worker.wsgi)
