"""The task contract shared by producers, the HTTP shim and the worker.

Light on purpose: producers import this package without any worker code (no onnxruntime).
"""

from tasks.contract import MESSAGE_VERSION, TASK_NAME, LocateMessage

__all__ = ["MESSAGE_VERSION", "TASK_NAME", "LocateMessage"]
