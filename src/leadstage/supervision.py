"""A service process ends when one of its long-running tasks fails.

A service's background tasks (the engine's consume loop, its outbox relays and
webhook dispatchers, ingest's dead-letter writer...) each retry what they expect to
fail (a lost connection, an unreachable broker). Anything else ends the task. A
task that ended that way in silence would leave a process that answers its health
checks but no longer publishes changes, delivers webhooks or writes dead letters.
So a failed task stops the whole process, with exit status 1, and its supervisor
restarts it:
every task resumes from what is stored (offsets in PostgreSQL, the unpublished
outbox rows), so a restart loses and repeats nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

TaskT = TypeVar("TaskT", bound="asyncio.Task[Any]")


def terminate_this_process() -> None:
    """What a supervisor's stop does: uvicorn shuts the app down cleanly on SIGTERM."""
    os.kill(os.getpid(), signal.SIGTERM)


def stop_failed_app(app: Any) -> None:
    """Mark ``app`` failed (``leadstage <role>`` then exits with status 1) and shut it
    down cleanly.

    Through the uvicorn server the CLI keeps in ``app.state.server`` when there is one:
    a SIGTERM would also stop it, but uvicorn raises a caught signal again once it has
    shut down, so the process would die of it (status 143, which systemd's
    ``Restart=on-failure`` counts as a clean stop) instead of exiting with 1.
    """
    app.state.failed = True
    server = getattr(app.state, "server", None)
    if server is not None:
        server.should_exit = True
    else:
        terminate_this_process()


class TaskFailures:
    """Watches a service's long-running tasks; the first that fails stops the process.

    ``failed`` tells the caller to exit non-zero. A task that returns or is cancelled
    (as at shutdown) is not a failure.
    """

    def __init__(self, stop: Callable[[], None] = terminate_this_process) -> None:
        self._stop = stop
        self.failed = False

    def watch(self, task: TaskT) -> TaskT:
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        logger.error("task %s failed; stopping the process", task.get_name(), exc_info=error)
        if not self.failed:
            self.failed = True
            self._stop()
