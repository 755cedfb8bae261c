"""Job state in Redis (keys.py names every key): what the API reads and what workers
write. Any API server answers for any job. Rows and events are handed out as raw JSON
strings: the routes frame them without decoding.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .. import encoding
from ..config import JobsConfig
from . import keys, queue, scripts
from .keys import Field, Hash, JobStatus
from .models import Job, JobSpec, UnitResult, now_iso, now_ms
from .queue import Submission

RESULTS_BATCH = 500
# socket_timeout above every BLOCK the engine uses (event reads: 1 s, queue reads: 0.5 s)
SOCKET_TIMEOUT_S = 30


def retry() -> Retry:
    """A dropped connection is tried again twice, quickly; Redis down answers within a
    second (a 503), not after redis-py's default backoff of seconds."""
    return Retry(ExponentialBackoff(cap=0.25, base=0.05), 2)


@dataclass(slots=True)
class SaveOp:
    """Finished units of one chunk; `ack` with the chunk's last ones."""

    job_id: str
    entry: str
    units: list[UnitResult]
    ack: bool = False
    drop_checkpoints: bool = True
    run: int = 0  # the chunk's run (Entry.RUN): a retry refuses what a run before it still writes


@dataclass(slots=True)
class Begun:
    """What a worker reads before running a chunk."""

    status: str  # '' when the job is gone
    done: set[int]
    checkpoints: dict[int, dict[str, Any]]


def pack_units(units: Sequence[UnitResult]) -> bytes:
    """The SAVE script's blob (scripts.py): rows framed by their byte length."""
    parts = []
    for u in units:
        parts.append(f"{u.unit} {len(u.rows)} {u.usage[0]} {u.usage[1]} {u.cost_usd:.12f} {u.cached_calls}\n".encode())
        for index, row in u.rows:
            # app.encoding: an LLM answer may hold inf or a lone surrogate, which json.dumps
            # writes as `Infinity` or cannot encode at all (and the result writer stopped on it)
            data = encoding.dumps(row)
            failed = "0" if row.get("error") is None else "1"
            parts.append(f"{'-' if index is None else index} {failed} {len(data)}\n".encode())
            parts.append(data)
    return b"".join(parts)


def lua(script: AsyncScript, keys: list[str], args: list[Any]) -> tuple:
    # EVALSHA by hand: redis-py sends SCRIPT EXISTS before every pipeline that holds a Script
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


class JobStore:
    def __init__(self, redis: Redis, config: JobsConfig):
        self.redis = redis
        self.config = config
        self._start = redis.register_script(scripts.START)
        self._save = redis.register_script(scripts.SAVE)
        self._finish = redis.register_script(scripts.FINISH)
        self._flush = redis.register_script(scripts.FLUSH_PROGRESS)
        self._hset_if_job = redis.register_script(scripts.HSET_IF_JOB)
        self._checkpoint = redis.register_script(scripts.CHECKPOINT)

    @classmethod
    def connect(cls, url: str, config: JobsConfig) -> JobStore:
        return cls(connect(url, config.pool_size), config)

    async def aclose(self) -> None:
        await self.redis.aclose()

    # ---- the API's side ----

    async def queue_depth(self) -> int:
        """Chunks queued or in flight (entries are deleted on ack): the metrics gauge."""
        return await self.redis.xlen(keys.QUEUE)

    async def submit(self, sub: Submission) -> Job:
        await queue.enqueue(self.redis, sub, result_ttl_s=self.config.result_ttl_s)
        return sub.job

    async def get(self, job_id: str) -> Job | None:
        fields = cast(Hash, await self.redis.hgetall(keys.job(job_id)))
        return Job.from_fields(fields) if fields.get(Field.ID) else None

    async def list_jobs(self, owner: str | None, limit: int) -> list[Job]:
        """The owner's jobs, newest first."""
        index = keys.owner_index(owner)
        ids = cast(list[str], await self.redis.zrevrange(index, 0, limit - 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            found = cast(list[Hash], await pipe.execute())
        gone = [job_id for job_id, f in zip(ids, found) if not f.get(Field.ID)]
        if gone:  # expired (result_ttl_s) or deleted
            await self.redis.zrem(index, *gone)
        return [Job.from_fields(f) for f in found if f.get(Field.ID)]

    async def results(self, job: Job) -> AsyncIterator[list[tuple[int, str]]]:
        total, rows_out = await self.redis.hmget(keys.job(job.id), [Field.TOTAL, Field.ROWS_OUT])
        bound = max(int(total or 0), int(rows_out or 0))
        for start in range(0, bound, RESULTS_BATCH):
            indexes = range(start, min(start + RESULTS_BATCH, bound))
            values = cast(list[str | None], await self.redis.hmget(keys.results(job.id), [str(i) for i in indexes]))
            batch = [(i, v) for i, v in zip(indexes, values) if v is not None]
            if batch:
                yield batch

    async def rows(self, job_id: str, indexes: Sequence[int]) -> list[str | None]:
        if not indexes:
            return []
        return cast(list[str | None], await self.redis.hmget(keys.results(job_id), [str(i) for i in indexes]))

    async def cancel(self, job_id: str) -> Job | None:
        await self.finish(job_id, JobStatus.CANCELLED)
        return await self.get(job_id)

    async def delete(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.job_keys(job.id), keys.inputs(job.id))
            pipe.zrem(keys.owner_index(job.owner), job.id)
            pipe.publish(keys.CANCEL_CHANNEL, job.id)
            await pipe.execute()

    # ---- the workers' side ----

    async def begin(self, job_id: str, units: Sequence[int], *, whole: bool) -> Begun:
        """Mark the job running and read what a retried chunk needs: which units are
        already stored and their checkpoints."""
        fields = [str(u) for u in units]
        status, done, ckpts = await self._execute([
            lua(self._start, keys.job_keys(job_id), [now_iso(), now_ms()]),
            ("HMGET", keys.units(job_id), *fields),
            # a whole-stream task checkpoints per slot, not per unit: take them all
            ("HGETALL", keys.checkpoints(job_id)) if whole else ("HMGET", keys.checkpoints(job_id), *fields),
        ])
        if not status:
            return Begun("", set(), {})
        if whole:
            ckpt = {int(u): json.loads(v) for u, v in ckpts.items()}
        else:
            ckpt = {u: json.loads(v) for u, v in zip(units, ckpts) if v is not None}
        return Begun(status=status, done={u for u, d in zip(units, done) if d is not None}, checkpoints=ckpt)

    async def spec(self, job_id: str) -> tuple[JobSpec, int] | None:
        """The job's spec and its run (Field.RUN)."""
        raw, run = await self.redis.hmget(keys.job(job_id), [Field.SPEC, Field.RUN])
        return None if raw is None else (JobSpec.model_validate_json(raw), int(run or 0))

    async def save(self, ops: Sequence[SaveOp], checkpoints: Sequence[tuple[str, int, str, int]] = ()) -> list[str]:
        """Store finished units (and checkpoints `(job, unit, value, run)` first, in one round
        trip); -> each job's status after ('' when it is gone)."""
        stamp_ms, stamp = now_ms(), now_iso()
        commands = [lua(self._checkpoint, keys.job_keys(job_id), [unit, value, run])
                    for job_id, unit, value, run in checkpoints]
        for op in ops:
            args = [op.entry, "1" if op.ack else "0", stamp_ms, stamp, self.config.result_ttl_s, keys.GROUP,
                    "1" if op.drop_checkpoints else "0", len(op.units), pack_units(op.units), op.run]
            commands.append(lua(self._save, [*keys.job_keys(op.job_id), keys.QUEUE], args))
        return (await self._execute(commands))[len(checkpoints):]

    async def finish(self, job_id: str, status: JobStatus, error: str | None = None) -> str:
        """Cancel or fail a job that is still active; tells the workers to drop it."""
        assert status in (JobStatus.CANCELLED, JobStatus.FAILED)
        after, _ = await self._execute([
            lua(self._finish, keys.job_keys(job_id), [status, now_iso(), self.config.result_ttl_s, error or ""]),
            ("PUBLISH", keys.CANCEL_CHANNEL, job_id),
        ])
        return after

    async def flush_progress(self, job_ids: Sequence[str]) -> None:
        stamp = now_ms()
        await self._execute([lua(self._flush, keys.job_keys(job_id), [stamp]) for job_id in job_ids])

    async def _execute(self, commands: list[tuple]) -> list[Any]:
        """One pipeline round trip; -> the answers, in order. Scripts go by sha: after a
        Redis restart (or SCRIPT FLUSH) they are loaded again, and only the commands that
        answered NOSCRIPT (and so did not run) are sent again."""
        answers: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    pipe.execute_command(*commands[i])
                got = await pipe.execute(raise_on_error=False)
            missing = []
            for i, answer in zip(todo, got):
                if isinstance(answer, NoScriptError) and attempt == 1:
                    missing.append(i)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    answers[i] = answer
            if not missing:
                break
            for script in (self._start, self._save, self._finish, self._flush, self._hset_if_job, self._checkpoint):
                await self.redis.script_load(script.script)
            todo = missing
        return answers

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id), Field.STATUS)
            found = await pipe.execute()
        return {job_id: status or "" for job_id, status in zip(job_ids, found)}

    async def last_error(self, job_id: str) -> str | None:
        return cast(str | None, await self.redis.hget(keys.job(job_id), Field.LAST_ERROR))

    async def set_last_error(self, job_id: str, message: str) -> None:
        await self._hset_if_job(keys=[keys.job(job_id), keys.job(job_id)], args=[Field.LAST_ERROR, message])


def connect(url: str, pool_size: int) -> Redis:
    """A client on a pool of at most `pool_size` connections; a command that finds them all
    busy waits for one (up to SOCKET_TIMEOUT_S) rather than failing at once."""
    pool = BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=SOCKET_TIMEOUT_S,
                                           decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                           socket_connect_timeout=5, health_check_interval=30, retry=retry())
    return Redis.from_pool(pool)
