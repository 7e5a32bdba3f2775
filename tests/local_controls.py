"""What only tests do to the local stack: kill a canary the way a crash does, stop and start
Redis, list the running app instances with their URLs."""

from __future__ import annotations

import contextlib
import os
import signal

from rollout.local.processes import pid_alive
from rollout.local.stack import LocalStack


def app_instances(stack: LocalStack) -> list[tuple[str, str, str]]:
    """``(instance name, track, base URL)`` of every running app instance."""
    return [
        (i.name, i.track, i.url)
        for i in stack.instances(stack.load())
        if i.pid is not None and pid_alive(i.pid)
    ]


def kill_canary(stack: LocalStack) -> None:
    """SIGKILL every canary process: what a crash looks like."""
    for inst in stack.instances(stack.load()):
        if inst.track == "canary" and inst.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(inst.pid, signal.SIGKILL)


def stop_redis(stack: LocalStack) -> None:
    stack.redis(stack.load()).stop()


def start_redis(stack: LocalStack) -> None:
    stack.redis(stack.load()).start()
