"""The Celery app our interop tests talk through.

Configured from the environment so each Rust test gets its own key prefix:
OTQ_URL (Redis URL, also the result backend) and OTQ_PREFIX (kombu's
`global_keyprefix`, applied to broker and result keys alike), OTQ_VT
(visibility timeout in seconds, default 3600).
"""
import os

from celery import Celery

URL = os.environ.get("OTQ_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("OTQ_PREFIX", "")

app = Celery("pyapp", broker=URL, backend=URL)
app.conf.broker_transport_options = {
    "global_keyprefix": PREFIX,
    "visibility_timeout": float(os.environ.get("OTQ_VT", "3600")),
}
app.conf.result_backend_transport_options = {"global_keyprefix": PREFIX}
app.conf.task_serializer = "json"
app.conf.result_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True


@app.task(name="tests.py_add")
def py_add(a, b):
    return a + b


@app.task(name="tests.py_fail")
def py_fail(key):
    raise KeyError(key)
