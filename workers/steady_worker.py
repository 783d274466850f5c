"""An RQ SimpleWorker that waits out its Redis (the queue Redis) instead of quitting, and comes back registered.

What RQ 3.0 does on its own when its Redis goes away: the blocking dequeue retries with backoff
(an error line per retry), but a connection error anywhere else in the loop (a job's bookkeeping,
the heartbeat after a job, the suspension check, the registry cleanup) or any timeout quits the
worker: a lone worker exits, a pool's is forked again every second and fails at its registration
while Redis is down. When the Redis comes back EMPTY (no persistence, a new host), the worker's
heartbeat (HSET + EXPIRE) makes its key again with one field and no registration: it goes on
working but no longer counts among the workers (`rq info`, `hookstream status`).

Here every such error waits for the Redis to answer (one warning when it goes, one when it is
back), then the worker registers again if its registration is gone and goes on; a stop request
ends the wait. A job whose bookkeeping failed is left as it is: its stream entries stay pending
and are reclaimed after the visibility timeout, which is the design's record of what is unfinished.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.worker import WorkerStatus

log = logging.getLogger("hookstream.worker")

OUTAGE = (RedisConnectionError, RedisTimeoutError)
WAIT_FIRST_S = 0.2
WAIT_MAX_S = 5.0


class SteadyWorker(SimpleWorker):
    def wait_for_redis(self, exc: BaseException) -> None:
        """Until the Redis answers a PING (backoff up to WAIT_MAX_S); then registered again if needed."""
        started = time.monotonic()
        log.warning("queue Redis unavailable (%s: %s); waiting for it", type(exc).__name__, str(exc)[:200])
        delay = WAIT_FIRST_S
        while True:
            if self._stop_requested:
                raise StopRequested()
            time.sleep(delay)
            try:
                self.connection.ping()
                break
            except OUTAGE:
                delay = min(delay * 2, WAIT_MAX_S)
        log.warning("queue Redis available again after %.1f s", time.monotonic() - started)
        self.ensure_registered()

    def ensure_registered(self) -> None:
        """Register again when the Redis lost the registration (restarted empty)."""
        if self.connection.sismember(self.redis_workers_keys, self.key):
            return
        log.warning("worker %s was no longer registered (the queue Redis restarted empty?): registering again",
                    self.name)
        self.connection.delete(self.key)
        self.register_birth()  # type: ignore[no-untyped-call]  # rq is unannotated here
        self.set_state(WorkerStatus.IDLE)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's loop, never with its scheduler: no job here is scheduled, and the scheduler's own
        process dies with a traceback whenever its Redis goes away (RQ's pool asks for one)."""
        kwargs["with_scheduler"] = False
        return bool(super().work(*args, **kwargs))

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """A job that failed because a Redis went away (its own work, or RQ's bookkeeping after it):
        one warning, not RQ's traceback. Nothing is lost: its stream entries stay pending until they
        are acknowledged, and are reclaimed after the visibility timeout if they never are."""
        if isinstance(exc_info[1], OUTAGE):
            log.warning("job %s not recorded as done: Redis unavailable (%s); its entries stay pending",
                        job.id, type(exc_info[1]).__name__)
            return
        super().handle_exception(job, *exc_info)

    # -- the places where RQ would quit ----------------------------------------------------------

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        while True:
            try:
                return super().bootstrap(*args, **kwargs)  # type: ignore[no-any-return]
            except OUTAGE as exc:
                self.wait_for_redis(exc)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # part of RQ's own pipeline: its caller handles the outcome
            super().heartbeat(timeout, pipeline)
            return
        try:
            super().heartbeat(timeout)
            # One SISMEMBER a heartbeat (about two a batch): the heartbeat itself would have made the
            # key of a worker that the Redis forgot again, without its registration.
            self.ensure_registered()
        except OUTAGE as exc:
            self.wait_for_redis(exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except OUTAGE as exc:
            self.wait_for_redis(exc)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except OUTAGE as exc:
            self.wait_for_redis(exc)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except OUTAGE as exc:
            self.wait_for_redis(exc)

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except OUTAGE as exc:  # stopping while the Redis is away: its registration expires on its own
            log.warning("could not unregister worker %s (%s)", self.name, type(exc).__name__)
