"""Capture raw Celery protocol v2 messages as real Python Celery writes them to Redis.

Usage: python3 capture.py REDIS_URL PREFIX OUT_DIR

Each case is published with `send_task` through kombu's Redis transport (with
`global_keyprefix` so nothing else on the server is touched), then the raw list
entry is read back with LRANGE and written verbatim to OUT_DIR/<case>.json.
"""
import datetime
import json
import os
import sys

import redis
from celery import Celery

url, prefix, out = sys.argv[1], sys.argv[2], sys.argv[3]
app = Celery("capture", broker=url, backend=url)
app.conf.broker_transport_options = {"global_keyprefix": prefix}
app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
r = redis.Redis.from_url(url)

SEP = "\x06\x16"


def grab(case, list_name, **kw):
    app.send_task(**kw)
    for key in [list_name] + [f"{list_name}{SEP}{p}" for p in (3, 6, 9)]:
        raw = r.rpop(prefix + key)
        if raw is not None:
            with open(os.path.join(out, f"{case}.json"), "wb") as f:
                f.write(raw)
            print(case, "from", repr(key))
            return
    raise SystemExit(f"{case}: nothing captured")


eta = datetime.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
grab("plain", "celery", name="tests.add", args=[2, 3])
grab("kwargs", "celery", name="tests.echo", args=["hi"], kwargs={"upper": True, "n": 1.5})
grab("options", "celery", name="tests.add", args=[1, 2], countdown=30, expires=600,
     priority=6, time_limit=20, soft_time_limit=10, task_id="9d2b3a2c-1111-4c1a-9a43-000000000001")
grab("eta_naive", "celery", name="tests.add", args=[1, 1], eta=eta.replace(tzinfo=None))
grab("eta_utc", "celery", name="tests.add", args=[1, 1], eta=eta, expires=eta)
grab("queue_priority", "other", name="tests.noop", queue="other", priority=9)
grab("ignore_result", "celery", name="tests.noop", ignore_result=True, retries=2)
