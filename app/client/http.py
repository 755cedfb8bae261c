"""The jobs API over HTTP (docs/api.md, "Jobs"), as the CLI uses it: submit, follow the
event stream (reconnecting with Last-Event-ID), list, cancel, retry, download."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

RECONNECTS = 5  # event stream drops in a row before giving up
RECONNECT_WAIT_S = 1.0
ACTIVE = ("queued", "running")


class ServerError(Exception):
    """The server answered 4xx/5xx (`status`) or could not be reached (`status` 0)."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail if isinstance(detail, str) else json.dumps(detail))
        self.status = status
        self.detail = detail


def _tls_context(url: str) -> ssl.SSLContext | bool:
    """True (httpx's default context, with the CA bundle) wherever TLS may be spoken. A plain
    http:// server with no proxy from the environment never is; loading the bundle there
    cost ~0.03 s of the CLI's start, so a context without CAs stands in: one that would
    refuse every TLS peer, never trust one."""
    if url.lower().startswith("http://") and not any(k.lower().endswith("_proxy") for k in os.environ):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return True


class Server:
    def __init__(self, url: str, api_key: str | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read=None: an event stream may be quiet for a while (the server sends keep-alives)
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, verify=_tls_context(url),
                                      timeout=httpx.Timeout(60.0, read=None))

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerError(0, f"cannot reach {self.http.base_url}: {exc or type(exc).__name__}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServerError(r.status_code, detail)
        return r.json() if r.content else None

    async def kind(self, name: str) -> str:
        """`task` or `pipeline`: what NAME is on this server."""
        for kind, path in (("task", f"/tasks/{name}"), ("pipeline", f"/pipelines/{name}")):
            try:
                await self.call("GET", path)
                return kind
            except ServerError as exc:
                if exc.status not in (404, 405):
                    raise
        raise ServerError(404, f"no task or pipeline named {name!r} on {self.http.base_url}")

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/jobs", json=body)

    async def submit_file(self, body: dict[str, Any], name: str, content: bytes) -> dict[str, Any]:
        """POST /jobs as multipart: the rows as the file `name`, the rest of the job as JSON."""
        return await self.call("POST", "/jobs", files={"file": (name, content)}, data={"job": json.dumps(body)})

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self.call("GET", f"/jobs/{job_id}")

    async def jobs(self) -> list[dict[str, Any]]:
        return (await self.call("GET", "/jobs"))["jobs"]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.call("POST", f"/jobs/{job_id}/cancel")

    async def retry(self, job_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.call("POST", f"/jobs/{job_id}/retry", json=body or None)

    async def download(self, job_id: str, fmt: str, path: Path) -> None:
        """The job's results in `fmt`, streamed to `path`."""
        try:
            async with self.http.stream("GET", f"/jobs/{job_id}/results", params={"format": fmt}) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise ServerError(r.status_code, r.json().get("detail", r.text))
                with path.open("wb") as f:
                    async for chunk in r.aiter_bytes():
                        f.write(chunk)
        except httpx.TransportError as exc:
            raise ServerError(0, f"cannot reach {self.http.base_url}: {exc or type(exc).__name__}") from None

    async def events(self, job_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event, data) from the job's event stream until its last `done`; a dropped
        connection is resumed where it stopped (Last-Event-ID), so no event is seen twice.
        A `done` followed by a retry (the job ran again) is read past, to the last one."""
        last_id: str | None = None
        drops = 0
        while True:
            retried = False
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with self.http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise ServerError(r.status_code, r.json().get("detail", r.text))
                    parser = EventParser()
                    async for chunk in _and_end(r.aiter_bytes()):
                        for event, event_id, data in parser.feed(chunk):
                            drops = 0
                            last_id = event_id or last_id
                            yield event, data
                            if event == "done":
                                # retried since (running again, or ended again later): read on
                                now = await self.job(job_id)
                                if now["status"] not in ACTIVE and now.get("finished_at") == data.get("finished_at"):
                                    return
                                retried = True
                                break
                        if retried:
                            break
            except httpx.TransportError as exc:
                drops += 1
                if drops > RECONNECTS:
                    raise ServerError(0, f"lost the event stream of {job_id}: {exc or type(exc).__name__}") from None
                await asyncio.sleep(RECONNECT_WAIT_S)
                continue
            if retried:
                continue
            # the stream ended without `done` (a server restart): read on from where it stopped
            drops += 1
            if drops > RECONNECTS:
                raise ServerError(0, f"the event stream of {job_id} keeps ending before `done`")
            await asyncio.sleep(RECONNECT_WAIT_S)


class EventParser:
    """An event stream's bytes, fed as they come, to (event, id, data) with `data` parsed as
    JSON. Lines end at CR LF, LF or CR (and nowhere else: `str.splitlines`, which httpx's
    `aiter_lines` uses, also cuts at U+2028, U+0085 and others, which JSON written with
    ensure_ascii=False keeps raw in a data line); a blank line dispatches the event.
    Parsed a chunk at a time, not a line at a time through async iterators: ~5,000 row
    events a run come at the CLI while the server works on the same cores."""

    def __init__(self) -> None:
        self.pending = b""  # an incomplete last line (and a CR that a LF may follow)
        self.event: str = "message"
        self.event_id: str | None = None
        self.data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str | None, Any]]:
        """The events that `chunk` completes; b"" is the stream's end (a last CR ends its line)."""
        if not chunk and self.pending.endswith(b"\r"):
            chunk = b"\n"
        buf = self.pending + chunk if self.pending else chunk
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        last = buf.rfind(b"\n", 0, end)
        if b"\r" in buf:
            last = max(last, buf.rfind(b"\r", 0, end))
            complete = buf[:last + 1].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            complete = buf[:last + 1]
        self.pending = buf[last + 1:]
        out: list[tuple[str, str | None, Any]] = []
        if last < 0:
            return out
        for line in complete.split(b"\n")[:-1]:
            if not line:
                if self.data:
                    out.append((self.event, self.event_id, json.loads(b"\n".join(self.data))))
                self.event, self.event_id, self.data = "message", None, []
            elif line[0] == 58:  # b":", a comment (keep-alive)
                continue
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self.data.append(value)
                elif name == b"event":
                    self.event = value.decode()
                elif name == b"id":
                    self.event_id = value.decode()
        return out


async def _and_end(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk:
            yield chunk
    yield b""
