"""`hookstream worker`: RQ workers that do not fork per job, one process or a pool of them.

`SimpleWorker` runs each job in its own process, so a worker opens its Redis client and
Postgres pool once (lazily, after the pool's fork) and reuses them for every batch; as
`SteadyWorker` it waits out an outage of the queue Redis instead of quitting.
"""

from __future__ import annotations

from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from shared import connections
from shared.settings import Settings
from workers.steady_worker import SteadyWorker

# RQ logs every job at INFO; at hundreds of batches a second that drowns everything else.
RQ_LOG_LEVEL = "WARNING"


def queue_names(settings: Settings) -> list[str]:
    """Live batches first, replays after: RQ takes queues in the order given."""
    return [settings.queue, settings.replay_queue]


def run_workers(settings: Settings, *, processes: int = 1, burst: bool = False) -> int:
    redis = connections.queue_redis(settings)
    if processes <= 1:
        worker = SteadyWorker(queue_names(settings), connection=redis, serializer=JSONSerializer,
                              default_result_ttl=settings.result_ttl_s)
        worker.work(burst=burst, with_scheduler=False, logging_level=RQ_LOG_LEVEL)
        return 0
    pool = WorkerPool(queue_names(settings), connection=redis, num_workers=processes, worker_class=SteadyWorker,
                      serializer=JSONSerializer)
    pool.start(burst=burst, logging_level=RQ_LOG_LEVEL)
    return 0
