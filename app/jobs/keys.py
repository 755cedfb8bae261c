"""The vocabulary of the jobs subsystem, named once: every Redis key, stream, group and
channel, every field of the job hash and of its events, the job statuses. The Lua
scripts (scripts.py) get the same names through `LUA_NAMES`, so Python and Lua cannot
disagree.

    synthserve:queue                 stream   one entry per chunk of units: Entry.* {job, units, rows
                                              (their input rows, JSON), retry, run}; deleted when acknowledged
        group "workers"                       every worker reads through it; the PEL is the
                                              set of chunks in flight, per consumer
    synthserve:cancel                channel  job ids cancelled or deleted (workers drop their work)
    synthserve:jobs:{owner}          zset     job ids of one owner (API key id, "-" without auth),
                                              scored by creation time in microseconds
    synthserve:job:{id}              hash     the job: Field.* (public fields, counters, spec, event_seq)
    synthserve:job:{id}:units        hash     unit -> rows stored; HSETNX here is the exactly-once gate
    synthserve:job:{id}:results      hash     output index -> finished row (JSON)
    synthserve:job:{id}:events       stream   entry id "<seq>-0": {e: row, i: index} or
                                              {e: progress|done, SNAPSHOT fields}
    synthserve:job:{id}:checkpoints  hash     unit -> {step: answer} (JSON) of multi-call tasks
    synthserve:job:{id}:inputs       hash     unit -> its input row (JSON), for POST /jobs/{id}/retry;
                                              of a pipeline job also "t:<unit>" -> the unit's ledger
                                              (app.jobs.pipelines.Tree.ledger)
    synthserve:wake:{process}        stream   wakes one API process's event reader (jobs/follow.py)
    synthserve:spent:{id}            string   what the job's calls have cost so far, USD (app.spend's budget)
    synthserve:dedup:{scope}:{step}  hash     a pipeline dedup step's index: field -> the row id that
                                              claimed it (scope: a job id, or one request's token)
"""

from __future__ import annotations

from enum import StrEnum

from redis.typing import EncodableT, FieldT

PREFIX = "synthserve"
QUEUE = f"{PREFIX}:queue"
GROUP = "workers"
CANCEL_CHANNEL = f"{PREFIX}:cancel"
PROGRESS_INTERVAL_MS = 500  # progress events at most this often (API.md)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class Field(StrEnum):
    """Fields of the job hash."""

    # the job object (API.md)
    ID = "id"
    TASK = "task"
    OWNER = "owner"
    STATUS = "status"
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    TOTAL = "total"
    COMPLETED = "completed"
    FAILED = "failed"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    COST_USD = "cost_usd"              # what the stored rows' calls cost (llm_clients.cache prices them)
    CACHED_CALLS = "cached_calls"      # their calls answered from the call cache
    ERROR = "error"
    SEED = "seed"
    PIPELINE = "pipeline"              # a pipeline job's name ("" for a task job: app.jobs.pipelines)
    STEPS = "steps"                    # a pipeline job's counters per step: [[name, {...}], ...] (JSON)
    # the engine's own
    SPEC = "spec"                      # JobSpec, JSON
    UNITS_TOTAL = "units_total"
    UNITS_DONE = "units_done"
    ROWS_OUT = "rows_out"              # next free output index (rows per unit that vary)
    VARIABLE = "variable"              # "1": rows per unit vary, `total` is set at the end
    EVENT_SEQ = "event_seq"            # the last event's seq
    PROGRESS_COUNT = "progress_count"  # completed + failed at the last progress event
    PROGRESS_MS = "progress_ms"        # when the last progress event was logged
    LAST_ERROR = "last_error"          # why a chunk failed last (for the give-up message)
    RUN = "run"                        # the job's run: 0, then one more per POST /jobs/{id}/retry


# What progress and done events carry: the fields of the job that change while it runs.
SNAPSHOT = (Field.STATUS, Field.TOTAL, Field.COMPLETED, Field.FAILED, Field.INPUT_TOKENS, Field.OUTPUT_TOKENS,
            Field.COST_USD, Field.CACHED_CALLS, Field.STARTED_AT, Field.FINISHED_AT, Field.ERROR, Field.STEPS)


class Entry(StrEnum):
    """Fields of a queue entry (one chunk of a job)."""

    JOB = "job"
    UNITS = "units"    # its units, "0,1,2"
    ROWS = "rows"      # their input rows, a JSON list (tasks that take rows)
    RETRY = "retry"    # "1": put back by POST /jobs/{id}/retry (app.jobs.retry)
    RUN = "run"        # the job's run it belongs to (absent: 0); writes of another run are refused


class Event(StrEnum):
    """Event kinds, and the fields of an event entry."""

    PROGRESS = "progress"
    ROW = "row"
    DONE = "done"
    KIND = "e"     # field: the kind
    INDEX = "i"    # field of a row event: the output index


# Every client of the engine decodes replies (decode_responses=True): they are str, which
# redis-py types as bytes | str, so reads are cast once, where they are made, to these.
Hash = dict[str, str]
Entries = list[tuple[str, dict[str, str]]]  # XRANGE
StreamReply = list[tuple[str, Entries]]  # XREAD, XREADGROUP
Fields = dict[FieldT, EncodableT]  # what HSET mapping= and XADD take


def owner_index(owner: str | None) -> str:
    return f"{PREFIX}:jobs:{owner or '-'}"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


class Part(StrEnum):
    """The other keys of a job: keys.job(id) + the part (the Lua builds them as JOB .. P.<part>)."""

    UNITS = ":units"
    RESULTS = ":results"
    EVENTS = ":events"
    CHECKPOINTS = ":checkpoints"
    INPUTS = ":inputs"


def units(job_id: str) -> str:
    return job(job_id) + Part.UNITS


def results(job_id: str) -> str:
    return job(job_id) + Part.RESULTS


def events(job_id: str) -> str:
    return job(job_id) + Part.EVENTS


def checkpoints(job_id: str) -> str:
    return job(job_id) + Part.CHECKPOINTS


def inputs(job_id: str) -> str:
    return job(job_id) + Part.INPUTS


def wake(process: str) -> str:
    return f"{PREFIX}:wake:{process}"


def spent(job_id: str) -> str:
    return f"{PREFIX}:spent:{job_id}"


def dedup(scope: str, step: str) -> str:
    return f"{PREFIX}:dedup:{scope}:{step}"


def job_keys(job_id: str) -> list[str]:
    """The keys of one job, in the order the Lua scripts take them (KEYS[1..5])."""
    return [job(job_id), units(job_id), results(job_id), events(job_id), checkpoints(job_id)]


def _lua_table(name: str, values: dict[str, str]) -> str:
    return f"local {name} = {{" + ", ".join(f"{k.lower()} = '{v}'" for k, v in values.items()) + "}"


# The Lua side of this module: F.status, S.running, E.row, Q.units, P.inputs, SNAPSHOT,
# PROGRESS_INTERVAL_MS
LUA_NAMES = "\n".join([
    _lua_table("F", {f.name: f.value for f in Field}),
    _lua_table("S", {s.name: s.value for s in JobStatus}),
    _lua_table("E", {e.name: e.value for e in Event}),
    _lua_table("Q", {e.name: e.value for e in Entry}),
    _lua_table("P", {p.name: p.value for p in Part}),
    "local SNAPSHOT = {" + ", ".join(f"'{name}'" for name in SNAPSHOT) + "}",
    f"local PROGRESS_INTERVAL_MS = {PROGRESS_INTERVAL_MS}",
])
