"""Cancellation that a library lost, honoured at the next step.

Python 3.11's `asyncio.wait_for` drops a cancellation when the awaited result is ready in
the same loop pass as the cancel: it returns the result and the task runs on (fixed in
3.12). aiomqtt awaits every publish, subscribe and connect that way. A long-lived loop that
awaited one and then waits for more work would never end, and the TaskGroup waiting for it
would hang the stop for good (a flag publish acknowledged just as SIGTERM arrived).

Rules: rolloutd's own code uses `asyncio.timeout`, never `wait_for`; a loop that awaits such a
library call calls `honour_cancel()` after it, so a lost cancellation is raised there.
"""

from __future__ import annotations

import asyncio


def honour_cancel() -> None:
    """Raise CancelledError if the running task was asked to cancel and is still running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
