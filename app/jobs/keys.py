"""Every Redis key, stream, group and channel name of the jobs subsystem, and nowhere else.

    synthserve:queue                 stream   one entry per chunk of units: {job, units, rows (their
                                              input rows, JSON)}; deleted when acknowledged
        group "workers"                       every worker reads through it; the PEL is the
                                              set of chunks in flight, per consumer
    synthserve:cancel                channel  job ids cancelled or deleted (workers drop their work)
    synthserve:jobs:{owner}          zset     job ids of one owner (API key id, "-" without auth),
                                              scored by creation time in microseconds
    synthserve:job:{id}              hash     the job: public fields, counters, spec, event_seq
    synthserve:job:{id}:units        hash     unit -> rows stored; HSETNX here is the exactly-once gate
    synthserve:job:{id}:results      hash     output index -> finished row (JSON)
    synthserve:job:{id}:events       stream   entry id "<seq>-0": {e: row, i} or {e: progress|done, job fields}
    synthserve:job:{id}:checkpoints  hash     unit -> {step: answer} (JSON) of multi-call tasks
"""

from __future__ import annotations

PREFIX = "synthserve"
QUEUE = f"{PREFIX}:queue"
GROUP = "workers"
CANCEL_CHANNEL = f"{PREFIX}:cancel"


def owner_index(owner: str | None) -> str:
    return f"{PREFIX}:jobs:{owner or '-'}"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def units(job_id: str) -> str:
    return f"{job(job_id)}:units"


def results(job_id: str) -> str:
    return f"{job(job_id)}:results"


def events(job_id: str) -> str:
    return f"{job(job_id)}:events"


def checkpoints(job_id: str) -> str:
    return f"{job(job_id)}:checkpoints"


def job_keys(job_id: str) -> list[str]:
    """The keys of one job, in the order the Lua scripts take them (KEYS[1..5])."""
    return [job(job_id), units(job_id), results(job_id), events(job_id), checkpoints(job_id)]
