"""Python-side actions for the interop tests. Prints one JSON line per result.

  client.py call QUEUE NAME ARGS_JSON [PRIORITY] [TIMEOUT]
      send_task, then AsyncResult.get(): {"ok": result} or
      {"error": "<module>.<type>", "message": str(exc)}
  client.py send QUEUE NAME ARGS_JSON PRIORITY   -> {"id": task_id}
  client.py sendmany QUEUE NAME JSON  where JSON is [[args, priority], ...]
  client.py lose QUEUE     consume one message without acking, then die
  client.py restore        run kombu's restore of expired unacked messages once
  client.py http URL       GET URL, print its JSON body on one line ({"error": ...} on failure)
"""
import json
import os
import sys

from pyapp import app

cmd = sys.argv[1]

if cmd in ("call", "send"):
    queue, name, args = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    priority = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    res = app.send_task(name, args=args, queue=queue, priority=priority)
    if cmd == "send":
        print(json.dumps({"id": res.id}), flush=True)
        sys.exit(0)
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 20
    try:
        print(json.dumps({"ok": res.get(timeout=timeout)}), flush=True)
    except Exception as e:  # noqa: BLE001 - we report whatever arrived
        t = type(e)
        print(json.dumps({"error": f"{t.__module__}.{t.__qualname__}", "message": str(e)}), flush=True)
elif cmd == "sendmany":
    queue, name = sys.argv[2], sys.argv[3]
    ids = [app.send_task(name, args=a, queue=queue, priority=p).id for a, p in json.loads(sys.argv[4])]
    print(json.dumps({"ids": ids}), flush=True)
elif cmd == "lose":
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(sys.argv[2])
        msg = q.get(timeout=10)
        print(json.dumps({"lost": msg.headers["id"]}), flush=True)
        # Die like a killed worker: no ack, no restore at shutdown.
        os._exit(0)
elif cmd == "restore":
    with app.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)
    print(json.dumps({"restored": True}), flush=True)
elif cmd == "http":
    import urllib.request
    try:
        with urllib.request.urlopen(sys.argv[2], timeout=10) as r:
            print(json.dumps(json.loads(r.read().decode())), flush=True)
    except Exception as e:  # noqa: BLE001 - the test retries
        print(json.dumps({"error": str(e)}), flush=True)
else:
    sys.exit(f"unknown command {cmd}")
