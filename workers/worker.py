"""`hookstream worker`: RQ workers that do not fork per job, one or a pool of processes."""

from __future__ import annotations

from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from shared.settings import Settings


def run_workers(settings: Settings, *, processes: int = 1, burst: bool = False) -> int:
    """Live batches first, replays after (RQ takes queues in the order given)."""
    redis = Redis.from_url(settings.redis_url_or_default())
    queues = [settings.queue, settings.replay_queue]
    if processes <= 1:
        worker = SimpleWorker(queues, connection=redis, serializer=JSONSerializer,
                              default_result_ttl=settings.result_ttl_s)
        worker.work(burst=burst, with_scheduler=False)
        return 0
    pool = WorkerPool(queues, connection=redis, num_workers=processes, worker_class=SimpleWorker,
                      serializer=JSONSerializer)
    pool.start(burst=burst)
    return 0
