"""Serving: the Celery worker, the job runner, dead letters, the models a worker serves, the
model registry, reloads and the service's metrics."""
