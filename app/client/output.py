"""The output file of `synthserve run`, and resuming into it.

Rows are appended to a journal beside the output (`OUT.partial`, JSONL) as they finish,
so a crash loses nothing; at the end (or on Ctrl-C) the rows already in the output and
the journal's are merged, sorted, and written in the output's format (CSV and Parquet
cannot be appended to). A fresh run's Parquet output is written ahead, a row group at a
time as rows come in order (`ParquetAhead`), so the end has only the last one to write. The journal's first line names the job it follows, so
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
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._ahead: ParquetAhead | None = None

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
        if self.format == "parquet" and not self.rows:
            self._ahead = ParquetAhead(self._tmp)

    def add(self, key: Key, row: Row) -> None:
        row = {k: v for k, v in row.items() if k != "index"}
        if isinstance(key, int):
            row = {"index": key, **row}
        if self._ahead is not None and (key in self.rows or not isinstance(key, int) or key < 0):
            self._ahead.give_up()  # a row again (a job run again): the end writes the file whole
            self._ahead = None
        self.rows[key] = row
        if self._ahead is not None and isinstance(key, int):
            self._ahead.add(key, self.rows)
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
        tmp = self._tmp
        order = sorted(self.rows, key=lambda k: tuple(map(int, k.split("."))) if isinstance(k, str) else (k,))
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.finish(self.rows, order):
            pass  # written while the rows came
        elif self.format == "jsonl" and self._spans:  # the journal's lines are the output's: not encoded twice
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


class ParquetAhead:
    """A fresh run's Parquet file written while its rows come: each batch of formats.BATCH
    rows in index order (0..999, then 1000..1999, ...) is measured (formats.Shape) and written
    as a row group to `tmp` once all its rows are in, so the end writes only the last batch.
    The same batches measured and converted in the same order as formats.write_rows: the
    same file. Given up (the end writes the file whole, as before) when a batch changes the
    shape measured so far (a column or a type first seen later: e.g. the first failed row's
    `error` after rows without one), a row comes twice, a write fails, or the rows are not
    0..N-1 at the end. ~50 ms of the end of a 5,000-row run (bench/cli_throughput)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.shape = formats.Shape()
        self.types: dict | None = None  # the shape the file's schema was made from
        self.writer: Any = None  # pyarrow.parquet.ParquetWriter
        self.batches = 0  # written
        self.counts: dict[int, int] = {}  # rows in, per batch
        self.ok = True

    def add(self, key: int, rows: dict[Key, Row]) -> None:
        """Row `key` (new) is in `rows`: write every batch now complete, in order."""
        b = key // formats.BATCH
        self.counts[b] = self.counts.get(b, 0) + 1
        while self.ok and self.counts.get(self.batches) == formats.BATCH:
            start = self.batches * formats.BATCH
            self._write([rows[i] for i in range(start, start + formats.BATCH)])

    def _write(self, batch: list[Row]) -> None:
        try:
            self.shape.add(batch)
            if self.writer is None:
                import pyarrow.parquet as pq

                self.types = dict(self.shape.types)
                self.writer = pq.ParquetWriter(str(self.tmp), self.shape.schema())
            elif self.shape.types != self.types:
                self.give_up()
                return
            self.writer.write_table(formats.arrow_table(batch, self.shape))
            self.batches += 1
        except Exception:  # noqa: BLE001 - the end writes the file whole, and reports what fails then
            self.give_up()
        except BaseException:  # Ctrl-C between the write and its count: never a batch written twice
            self.give_up()
            raise

    def finish(self, rows: dict[Key, Row], order: list[Key]) -> bool:
        """Write the batches left and close the file: True, or False when given up."""
        if self.ok and order and order[-1] == len(order) - 1 and order[0] == 0:  # keys: 0..N-1, unique
            for start in range(self.batches * formats.BATCH, len(order), formats.BATCH):
                if self.ok:
                    self._write([rows[i] for i in range(start, min(start + formats.BATCH, len(order)))])
            if self.ok:
                try:
                    self.writer.close()
                    return True
                except Exception:  # noqa: BLE001 - as in _write
                    pass
        self.give_up()
        return False

    def give_up(self) -> None:
        self.ok = False
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - the file goes anyway
                pass
            self.writer = None
        self.tmp.unlink(missing_ok=True)
