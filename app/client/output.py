"""The output file of `synthserve run`, and resuming into it.

Rows are appended to a journal beside the output (`OUT.partial`, JSONL) as they finish,
so a crash loses nothing; at the end (or on Ctrl-C) the rows already in the output and
the journal's are merged, sorted, and written in the output's format (CSV and Parquet
cannot be appended to). The journal's first line names the job it follows, so
`synthserve run --job ID` can reattach. Running again with the same output skips every
input row whose output rows are all there without an error.

A task's rows are keyed and sorted by `index` (their place over the whole input); a
pipeline's by `id` ("2" < "2.1" < "10": the input row, then the rows made from it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from .. import formats

Row = dict[str, Any]
Key = int | str  # a task row's index, or a pipeline row's id
FLUSH_INTERVAL_S = 0.5  # the journal reaches the disk at least this often while rows come


class OutputFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.format = formats.output_format(self.path)  # FormatError before any work
        self.journal_path = self.path.with_name(self.path.name + ".partial")
        self.rows: dict[Key, Row] = {}
        self.header: dict[str, Any] = {}
        self._journaled: set[Key] = set()  # rows read from an old journal, not yet in the output
        self._journal = None
        self._flushed = 0.0
        self._size = 0  # bytes in the journal so far
        self._spans: dict[Key, tuple[int, int]] = {}  # where add() wrote each row in the journal
        self._prepared: threading.Thread | None = None

    def load(self) -> None:
        """The rows of a previous run: the output file, then the journal (newer)."""
        if self.path.exists():
            for row in formats.read_rows(self.path):
                self._keep(row)
        if self.journal_path.exists():
            with self.journal_path.open(encoding="utf-8") as f:
                for n, line in enumerate(f):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break  # the torn last line of a crash
                    if n == 0 and "job" in row and "index" not in row:
                        self.header = row
                    else:
                        self._journaled.add(self._keep(row))

    def _keep(self, row: Row) -> Key:
        if "index" not in row and isinstance(row.get("id"), str):  # a pipeline's
            self.rows[row["id"]] = row
            return row["id"]
        try:
            index = int(row["index"])
        except (KeyError, TypeError, ValueError):
            raise formats.FormatError(f"{self.path}: a row without an `index` or `id`; "
                                      "not an output of synthserve run") from None
        self.rows[index] = {**row, "index": index}
        return index

    def done_units(self, per_unit: int) -> set[int]:
        """Units (input rows, or generations) whose `per_unit` rows are all here, error-free."""
        good: dict[int, int] = {}
        for index, row in self.rows.items():
            if isinstance(index, int) and not row.get("error"):
                good[index // per_unit] = good.get(index // per_unit, 0) + 1
        return {u for u, n in good.items() if n == per_unit}

    def done_inputs(self) -> set[int]:
        """A pipeline's input rows whose rows are all here, error-free (one that was
        filtered out left none: it runs again)."""
        inputs: dict[int, bool] = {}
        for key, row in self.rows.items():
            if isinstance(key, str):
                root = int(key.split(".", 1)[0])
                inputs[root] = inputs.get(root, True) and not row.get("error")
        return {root for root, ok in inputs.items() if ok}

    def drop_inputs(self, roots: set[int]) -> None:
        """Forget a pipeline's rows of these input rows (they run again, perhaps to other rows)."""
        self.rows = {k: r for k, r in self.rows.items() if not (isinstance(k, str) and int(k.split(".", 1)[0]) in roots)}

    def clear(self) -> None:
        """Forget the previous run's rows (a run that starts over)."""
        self.rows, self._journaled = {}, set()

    def start(self, header: dict[str, Any] | None = None) -> None:
        """Open the journal anew with `header` (the job followed, if any) and the rows an
        old journal held that the output does not have yet."""
        self.header = header or {}
        if self._prepared is None:  # the Parquet writer's imports load while rows come, off the end
            self._prepared = threading.Thread(target=formats.prepare, args=(self.format,), daemon=True,
                                              name="prepare-output")
            self._prepared.start()
        self._journal = self.journal_path.open("wb")
        head = json.dumps(self.header) + "\n" if self.header else ""
        data = (head + formats.jsonl_text(self.rows[i] for i in sorted(self._journaled) if i in self.rows)).encode()
        self._journal.write(data)
        self._journal.flush()
        self._size, self._spans = len(data), {}

    def add(self, key: Key, row: Row) -> None:
        row = {k: v for k, v in row.items() if k != "index"}
        if isinstance(key, int):
            row = {"index": key, **row}
        self.rows[key] = row
        line = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        self._journal.write(line)
        self._spans[key] = (self._size, len(line))
        self._size += len(line)
        if (now := time.monotonic()) - self._flushed >= FLUSH_INTERVAL_S:
            self._journal.flush()
            self._flushed = now

    def finish(self, *, detached: bool = False) -> None:
        """Write the output; the journal goes, except the job header of a detached run."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._prepared is not None:
            self._prepared.join()
        tmp = self.path.with_name(self.path.name + ".tmp")
        order = sorted(self.rows, key=lambda k: tuple(map(int, k.split("."))) if isinstance(k, str) else (k,))
        if self.format == "jsonl" and self._spans:  # the journal's lines are the output's: not encoded twice
            journal = self.journal_path.read_bytes()
            tmp.write_bytes(b"".join(journal[span[0]:span[0] + span[1]] if (span := self._spans.get(k))
                                     else formats.jsonl_text([self.rows[k]]).encode() for k in order))
        else:
            formats.write_rows(tmp, [self.rows[k] for k in order], fmt=self.format)
        self._spans = {}
        os.replace(tmp, self.path)
        if detached and self.header:
            self.journal_path.write_text(json.dumps(self.header) + "\n")
        else:
            self.journal_path.unlink(missing_ok=True)

    @property
    def started(self) -> bool:
        return self._journal is not None

    @property
    def failed(self) -> int:
        return sum(bool(r.get("error")) for r in self.rows.values())
