"""Following a job's event log (GET /jobs/{id}/events) without a Redis connection per
stream: one blocking XREAD per API process covers every job that has watchers, and what
it reads is framed once and fanned out in memory. A thousand streams on one job cost one
connection and one read of each row.

A watcher first reads the log after its Last-Event-ID (XRANGE, on the shared pool), then
takes what the reader hands it; it registers before that first read, so nothing falls in
between, and drops what it has already sent (event ids are 1, 2, 3...). The reader starts
a job at the log's end when the job's first watcher comes (what is before it, each watcher
reads itself), and wakes for it at once by an entry on its own wake stream (keys.wake).
When Redis fails, every open stream ends with an `error` event (clients reconnect with
Last-Event-ID); the reader itself goes on once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast
from secrets import token_hex

from fastapi.sse import format_sse_event
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from ..sse import encode
from . import keys
from .keys import Entries, Event, StreamReply
from .models import Job
from .store import SOCKET_TIMEOUT_S, JobStore, retry

log = logging.getLogger("synthserve.jobs")

EVENTS_BATCH = 500
READ_BLOCK_MS = 1000  # the reader's longest wait; between reads it checks the followed jobs still exist
KEEPALIVE_S = 15.0
RETRY_S = 0.5
WAKE_TTL_S = 86_400

Frame = tuple[int, str, bytes]  # (seq, event kind, the SSE bytes)
_GONE = object()  # the job was deleted (or expired) while followed


class Unreachable(Exception):
    """Redis failed under a followed job (its stream ends with an `error` event)."""


@dataclass(eq=False)
class _Followed:
    job: Job  # what progress/done events lay their fields over
    cursor: int = -1  # the last seq the reader has handed out; -1: not placed yet
    placing: asyncio.Task[None] | None = None
    watchers: set[asyncio.Queue[list[Frame] | object]] = field(default_factory=set)


class EventHub:
    def __init__(self, store: JobStore, url: str):
        self.store = store
        self.redis = Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                    socket_connect_timeout=5, max_connections=1, retry=retry())
        self._wake_key = keys.wake(token_hex(6))
        self._wake_id = "0-0"
        self._jobs: dict[str, _Followed] = {}
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # ends the reader's loop even if its cancel is lost in redis-py (worker.py)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read(), name="jobs-events")

    async def aclose(self) -> None:
        self._closing = True
        self._wanted.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.store.redis.delete(self._wake_key)
        await self.redis.aclose()

    # ---- one watcher ----

    async def follow(self, job: Job, after: int) -> AsyncIterator[bytes]:
        """The job's events after `after`, as SSE bytes, until `done`; an `error` event if
        Redis fails meanwhile."""
        inbox: asyncio.Queue[list[Frame] | object] = asyncio.Queue()
        try:
            await self._watch(job, after, inbox)
            seen_finished = False
            while True:  # the log so far
                frames = await self._backlog(job, after)
                if frames:
                    out, after, done = _render(frames, after)
                    yield out
                    if done:
                        return
                    continue
                current = await self.store.get(job.id)
                if current is None or (current.finished and seen_finished):
                    return  # deleted, or its `done` is at or before `after`
                if not current.finished:
                    break
                seen_finished = True  # it ended just now: read the log once more
            while True:  # then what the reader hands out
                try:
                    item = await asyncio.wait_for(inbox.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield format_sse_event(comment="keep-alive")
                    continue
                if item is _GONE:
                    return
                if isinstance(item, Unreachable):
                    raise item
                assert isinstance(item, list)
                out, after, done = _render(item, after)
                if out:
                    yield out
                if done:
                    return
        except (RedisError, Unreachable) as exc:
            log.warning("events of job %s: Redis failed: %s", job.id, exc)
            yield encode("error", {"detail": "the job store is unavailable; reconnect with Last-Event-ID"})
        finally:
            self._unwatch(job.id, inbox)

    async def _watch(self, job: Job, after: int, inbox: asyncio.Queue[list[Frame] | object]) -> None:
        """Register `inbox`; return once the reader's place in the job's log is known, so
        that the watcher's own read of the log reaches it."""
        followed = self._jobs.get(job.id)
        if followed is None:
            followed = self._jobs[job.id] = _Followed(job)
            followed.placing = asyncio.create_task(self._place(followed))
        followed.watchers.add(inbox)
        assert followed.placing is not None
        await asyncio.shield(followed.placing)  # (a watcher leaving meanwhile leaves it to the others)

    async def _place(self, followed: _Followed) -> None:
        """Start the reader at the end of the job's log, and wake it."""
        key = keys.events(followed.job.id)
        try:
            last = cast(Entries, await self.store.redis.xrevrange(key, count=1))
            followed.cursor = _seq(last[0][0]) if last else 0
            self._wanted.set()
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {keys.Entry.JOB: followed.job.id}, maxlen=16, approximate=True)
                pipe.expire(self._wake_key, WAKE_TTL_S)  # (a process killed leaves no key behind for long)
                await pipe.execute()
        except BaseException:
            if self._jobs.get(followed.job.id) is followed:  # its watchers fail; the next one starts over
                del self._jobs[followed.job.id]
            raise

    def _unwatch(self, job_id: str, inbox: asyncio.Queue[list[Frame] | object]) -> None:
        followed = self._jobs.get(job_id)
        if followed is not None:
            followed.watchers.discard(inbox)
            if not followed.watchers:
                del self._jobs[job_id]

    async def _backlog(self, job: Job, after: int) -> list[Frame]:
        entries = cast(Entries, await self.store.redis.xrange(keys.events(job.id), f"{after + 1}-0", "+",
                                                              count=EVENTS_BATCH))
        return await frames(self.store, job, entries)

    # ---- the reader ----

    async def _read(self) -> None:
        checked = time.monotonic()
        while not self._closing:
            if not self._jobs:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            followed_by = {keys.events(job_id): f for job_id, f in self._jobs.items() if f.cursor >= 0}
            streams: dict[KeyT, StreamIdT] = {key: f"{f.cursor}-0" for key, f in followed_by.items()}
            streams[self._wake_key] = self._wake_id
            try:
                answer = cast(StreamReply | None, await self.redis.xread(streams, count=EVENTS_BATCH,
                                                                         block=READ_BLOCK_MS))
                for key, entries in answer or ():
                    if key == self._wake_key:
                        self._wake_id = entries[-1][0]
                        continue
                    followed = followed_by[key]
                    if self._jobs.get(followed.job.id) is followed and entries:
                        batch = await frames(self.store, followed.job, entries)
                        followed.cursor = _seq(entries[-1][0])
                        for inbox in followed.watchers:
                            inbox.put_nowait(batch)
                if time.monotonic() - checked >= READ_BLOCK_MS / 1000:
                    checked = time.monotonic()
                    await self._drop_gone()
            except RedisError as exc:
                log.warning("job events reader: Redis failed: %s", exc)
                self._fail_all(Unreachable(str(exc)))
                await asyncio.sleep(RETRY_S)

    async def _drop_gone(self) -> None:
        ids = list(self._jobs)
        if not ids:
            return
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(keys.job(job_id))
            found = await pipe.execute()
        for job_id, exists in zip(ids, found):
            followed = self._jobs.get(job_id)
            if not exists and followed is not None:
                del self._jobs[job_id]
                for inbox in followed.watchers:
                    inbox.put_nowait(_GONE)

    def _fail_all(self, error: Unreachable) -> None:
        jobs, self._jobs = self._jobs, {}
        for followed in jobs.values():
            for inbox in followed.watchers:
                inbox.put_nowait(error)


# ---- framing ----

def _seq(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def frames(store: JobStore, job: Job, entries: Sequence[tuple[str, dict[str, str]]]) -> list[Frame]:
    """Log entries as SSE frames; rows are read in one round trip and never decoded."""
    indexes = [int(f[Event.INDEX]) for _, f in entries if f.get(Event.KIND) == Event.ROW]
    rows = iter(await store.rows(job.id, indexes))
    out: list[Frame] = []
    for entry_id, fields in entries:
        seq, kind = _seq(entry_id), fields.get(Event.KIND, "")
        if kind == Event.ROW:
            raw = next(rows)
            if raw is not None:  # (deleted meanwhile)
                data = f'{{"index":{fields[Event.INDEX]},"row":{raw}}}'
                out.append((seq, kind, format_sse_event(data_str=data, event=Event.ROW, id=str(seq))))
        else:
            out.append((seq, kind, encode(kind, job.with_fields(fields).public(), id=seq)))
    return out


def _render(batch: list[Frame], after: int) -> tuple[bytes, int, bool]:
    """The frames after `after`, joined; -> (bytes, the new `after`, whether `done` came)."""
    out = []
    for seq, kind, data in batch:
        if seq <= after:
            continue
        out.append(data)
        after = seq
        if kind == Event.DONE:
            return b"".join(out), after, True
    return b"".join(out), after, False
