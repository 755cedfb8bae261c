"""The default set-up's Redis: with no `[jobs] redis_url`, the API server runs a private
redis-server as its child, on a unix socket and an append-only file under `[jobs]
data_dir`, so its jobs survive a restart (kill -9 included: the next start reopens the
same directory). `synthserve worker` can join it with redis_url = "unix://<data_dir>/redis.sock".

The child dies with its parent (PR_SET_PDEATHSIG on Linux: a kill -9 of the server stops
it too, cleanly: SIGTERM lets Redis flush its log), and is started again should it exit on
its own. A lock file held by the server and the child keeps a second server from opening
the same directory; a restart waits for the last one's Redis to be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, ConnectionError

log = logging.getLogger("synthserve.jobs")

SOCKET = "redis.sock"
START_TIMEOUT_S = 60.0  # a long append-only file takes a while to load
LOCK_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
RESTART_DELAY_S = 1.0
PR_SET_PDEATHSIG = 1
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path, less its NUL


class PrivateRedisError(RuntimeError):
    """The private redis-server cannot run: the message says what to do."""


def socket_url(data_dir: str | os.PathLike[str]) -> str:
    return f"unix://{Path(data_dir).resolve() / SOCKET}"


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def redis_server() -> str:
    """The redis-server to run, or a PrivateRedisError naming both fixes."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise PrivateRedisError(
            "jobs need Redis: no [jobs] redis_url is set and there is no redis-server on PATH. "
            "Install it (apt-get install redis-server) or set [jobs] redis_url to a Redis server.")
    return exe


@contextlib.asynccontextmanager
async def private_redis(data_dir: str | os.PathLike[str]) -> AsyncIterator[str]:
    """Run redis-server under `data_dir` for the duration; -> its URL."""
    exe = redis_server()
    path = Path(data_dir).resolve()
    if len(bytes(path / SOCKET)) > MAX_SOCKET_PATH:
        raise PrivateRedisError(f"[jobs] data_dir {path} is too long a path for the private Redis's unix "
                                f"socket ({SOCKET} under it: at most {MAX_SOCKET_PATH} bytes); choose a shorter one")
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "lock", "w") as lock:
        await _lock(lock, path)
        server = _Server(exe, path, lock.fileno())
        await server.start()
        keeper = asyncio.create_task(server.keep_alive(), name="private-redis")
        try:
            yield server.url
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await server.stop()


class _Server:
    """The redis-server child. Should it exit while the API runs, it is started again on the
    same directory (its append-only file brings the jobs back): the API answers 503 meanwhile."""

    def __init__(self, exe: str, path: Path, lock_fd: int):
        self.exe, self.path, self.lock_fd = exe, path, lock_fd
        self.url = socket_url(path)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.exe, "--port", "0", "--unixsocket", str(self.path / SOCKET), "--unixsocketperm", "700",
            "--dir", str(self.path), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--logfile", "redis.log", "--pidfile", str(self.path / "redis.pid"), "--daemonize", "no",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(self.lock_fd,),  # the lock stays held while this Redis runs
            preexec_fn=_die_with_parent, start_new_session=True)  # Ctrl-C reaches the server, which stops it
        await _wait_ready(self.url, self.proc, self.path)
        log.info("private redis-server (pid %d) on %s", self.proc.pid, self.url)

    async def keep_alive(self) -> None:
        while True:
            assert self.proc is not None
            status = await self.proc.wait()
            log.error("the private redis-server exited (status %s): starting it again", status)
            while True:
                try:
                    await self.start()
                    break
                except PrivateRedisError as exc:
                    log.error("%s", exc)
                    await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self) -> None:
        if self.proc is not None:
            await _stop(self.proc)


async def _lock(lock, path: Path) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise PrivateRedisError(
                    f"{path} is in use by another synthserve server (its private Redis): join it with "
                    f"[jobs] redis_url = \"{socket_url(path)}\", or give this one another [jobs] data_dir") from None
            await asyncio.sleep(0.1)


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with Redis.from_url(url) as client:
        while True:
            try:
                await client.ping()
                return
            except (ConnectionError, BusyLoadingError, FileNotFoundError):
                if proc.returncode is not None or time.monotonic() > deadline:
                    tail = _tail(path / "redis.log")
                    raise PrivateRedisError(f"the private redis-server did not start under {path}:\n{tail}") from None
                await asyncio.sleep(0.02)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()  # SIGTERM: Redis flushes the append-only file and exits
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _tail(log_file: Path, lines: int = 10) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no redis.log)"
