"""The CLI's progress display: a live rich bar on a terminal (rows done and failed,
tokens, cost, rows/s, ETA), plain lines at most once a second otherwise."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

PLAIN_INTERVAL_S = 1.0


@dataclass(slots=True)
class Counts:
    total: int
    done: int = 0  # rows finished, failed ones included
    failed: int = 0
    tokens: int = 0
    cost_usd: float | None = None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressDisplay:
    """`update(counts)` as often as wanted; `close()` prints the last state. Rates count
    only the rows finished since this display started (a resumed run starts from its
    skipped rows)."""

    def __init__(self, label: str, counts: Counts, *, console: Console | None = None):
        self.console = console or Console()
        self.label = label
        self.counts = counts
        self.start_done = counts.done
        self.started = time.monotonic()
        self.last_plain = 0.0
        self.bar: Progress | None = None
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[details]}"),
                console=self.console, refresh_per_second=8)
            self.bar_task = self.bar.add_task(label, total=counts.total, details=self.details())
            self.bar.start()

    def rate_eta(self) -> tuple[float, float | None]:
        elapsed = time.monotonic() - self.started
        rate = (self.counts.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = self.counts.total - self.counts.done
        return rate, (left / rate if rate > 0 else None)

    def details(self) -> str:
        c = self.counts
        rate, eta = self.rate_eta()
        parts = [f"{c.failed} failed", f"{c.tokens:,} tokens"]
        if c.cost_usd is not None:
            parts.append(f"${c.cost_usd:.4f}")
        parts.append(f"{rate:.1f} rows/s")
        parts.append(f"ETA {_duration(eta)}" if eta is not None and c.done < c.total else "ETA -")
        return " · ".join(parts)

    def update(self, counts: Counts | None = None) -> None:
        if counts is not None:
            self.counts = counts
        if self.bar is not None:
            self.bar.update(self.bar_task, total=self.counts.total, completed=self.counts.done,
                            details=self.details())
        elif time.monotonic() - self.last_plain >= PLAIN_INTERVAL_S:
            self.plain_line()

    def plain_line(self) -> None:
        self.last_plain = time.monotonic()
        c = self.counts
        self.console.print(f"{self.label}: {c.done}/{c.total} rows · {self.details()}", highlight=False,
                           soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.stop()
        else:
            self.plain_line()

