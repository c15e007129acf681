"""The Python side of the queue benchmark: a Celery 5 app whose
`backend.tasks.test_task` does what ours does (returns the message, a status
and a timestamp), so both workers run the same messages and store the same
results on the same Redis."""

import datetime
import os

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ["BENCH_PREFIX"]

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


@app.task(name="backend.tasks.test_task")
def test_task(message="Hello"):
    return {
        "message": message,
        "status": "success",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
