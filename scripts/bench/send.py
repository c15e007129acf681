"""Queues N `backend.tasks.test_task` messages with Python Celery's own producer."""

import sys

from celery_app import app

n = int(sys.argv[1])
with app.producer_or_acquire() as producer:
    for i in range(n):
        app.send_task("backend.tasks.test_task", args=[f"m{i}"], producer=producer)
