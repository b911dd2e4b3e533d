"""A stand-in for `python -m pieceboard.jobs` that speaks its protocol without torch, for WorkerPool tests.

    FAKE_WORKER_PLAN='["die", "ok"]' FAKE_WORKER_STARTS=DIR python _fake_worker.py EVENTS_FD

The n-th worker started (counted with files in FAKE_WORKER_STARTS) follows the n-th entry of the plan (the last one
for later workers):

- `ok`: ready, then a completed result for every cell it is given;
- `die`: killed (SIGKILL) before it is ready;
- `fatal`: reports an error before it is ready and exits, as a worker that cannot start does;
- `user`: the same with an error in the user's input or disk (`user`: true);
- `stop`: ready, then reports its first cell `stopped` by SIGTERM and exits, as a worker sent SIGTERM does.
"""

import json
import os
import signal
import sys
from pathlib import Path

events = os.fdopen(int(sys.argv[-1]), "w", buffering=1, encoding="utf-8")
starts = Path(os.environ["FAKE_WORKER_STARTS"])
plan = json.loads(os.environ["FAKE_WORKER_PLAN"])
number = 0
while True:  # O_EXCL: two workers starting at once never take the same number
    try:
        os.close(os.open(starts / str(number), os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        number += 1
role = plan[min(number, len(plan) - 1)]


def send(kind: str, **payload: object) -> None:
    events.write(json.dumps({"kind": kind, **payload}) + "\n")


sys.stdin.readline()  # the WorkerSpec
if role == "die":
    os.kill(os.getpid(), signal.SIGKILL)
if role in ("fatal", "user"):
    send("fatal", error="ConfigError: b.toml: no such benchmark file", user=role == "user")
    sys.exit(1)
send("ready")
for line in sys.stdin:
    task = json.loads(line)
    if role == "stop":
        send("stopped", cell_id=task["cell_id"], signal="SIGTERM")
        sys.exit(0)
    result = {"id": task["cell_id"], "status": "completed", "config": task["stored_config"]}
    send("done", cell_id=task["cell_id"], result=result, trace=None)
