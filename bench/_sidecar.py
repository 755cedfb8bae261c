"""Shared by the sidecar benchmarks: run `python -m sidecar` on a free port and read the
peak RSS of its process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sidecar(model: str | None = None, *, options: list[str] = (), timeout_s: float = 300) -> Iterator[tuple[str, int]]:
    """(base_url, pid) of a sidecar started for the benchmark with `options` (its CLI's),
    stopped afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "sidecar", "--port", str(port), *(["--model", model] if model else []), *options]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited:\n{proc.stderr.read()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the sidecar did not become healthy")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the most resident memory the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cores() -> int:
    return len(os.sched_getaffinity(0))
