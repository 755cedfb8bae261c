"""The Batch API's records in the jobs' Redis: uploaded files (their bytes with them) and
batches (which jobs run which lines). A batch's state is read from its jobs."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

PREFIX = "synthserve:oai:"


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(12)}" if kind == "batch" else f"{kind}-{secrets.token_hex(12)}"


def owner_key(owner: str | None) -> str:
    return owner or "-"


@dataclass(slots=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    owner: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None}


@dataclass(slots=True)
class Group:
    """One job of a batch: the lines (0-based, in the input file) of one backend and model."""

    job: str
    lines: list[int]


@dataclass(slots=True)
class BatchRecord:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    total: int
    groups: list[Group] = field(default_factory=list)
    metadata: dict[str, str] | None = None
    owner: str | None = None
    cancelling_at: int | None = None
    expires_at: int | None = None
    expired_at: int | None = None


class Records:
    def __init__(self, redis: Redis, ttl_s: int):
        self.redis = redis
        self.ttl_s = ttl_s

    async def put_file(self, record: FileRecord, content: bytes) -> None:
        key = PREFIX + "file:" + record.id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"record": json.dumps(asdict(record)), "content": content})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def file(self, file_id: str, owner: str | None) -> FileRecord | None:
        raw = await self.redis.hget(PREFIX + "file:" + file_id, "record")
        record = FileRecord(**json.loads(raw)) if raw else None
        return record if record is not None and record.owner == owner else None

    async def file_content(self, file_id: str) -> bytes:
        raw = await self.redis.hget(PREFIX + "file:" + file_id, "content")
        return raw.encode() if isinstance(raw, str) else (raw or b"")

    async def put_batch(self, batch: BatchRecord) -> None:
        key, index = PREFIX + "batch:" + batch.id, PREFIX + "batches:" + owner_key(batch.owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, json.dumps(asdict(batch)), ex=self.ttl_s)
            pipe.zadd(index, {batch.id: time.time()})
            await pipe.execute()

    async def batch(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        raw = await self.redis.get(PREFIX + "batch:" + batch_id)
        if not raw:
            return None
        data = json.loads(raw)
        record = BatchRecord(**{**data, "groups": [Group(**g) for g in data["groups"]]})
        return record if record.owner == owner else None

    async def batch_ids(self, owner: str | None, limit: int) -> list[str]:
        return await self.redis.zrevrange(PREFIX + "batches:" + owner_key(owner), 0, limit - 1)
