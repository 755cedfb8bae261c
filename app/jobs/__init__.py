"""Batch jobs (API.md, "Jobs"): one engine on Redis, read in this order.

    keys.py     the vocabulary: every key, hash field, event kind and status (also the Lua's)
    models.py   the job object, its spec, the request body, chunks and unit results
    queue.py    the producer: plan a validated request into chunks, enqueue it in one MULTI
    scripts.py  the Lua that changes a job atomically (start, save rows, finish)
    store.py    JobStore: what the routes read and the workers write
    runner.py   one chunk through Task.stream
    writer.py   the worker's batched saves
    claims.py   the worker's side of the consumer group (read, keep, reclaim, release, ack)
    worker.py   the consumer: the API's own in the default set-up, and `synthserve worker`
    standalone.py  `synthserve worker`: a worker process (signals, backends, Redis)
    follow.py   event streams: one blocking read per process, fanned out in memory
    private.py  the default set-up's redis-server, a child of the API server

app.main's lifespan composes them: Redis (configured, or private), the store, the event
reader, and a worker when the API process consumes jobs itself.
"""
