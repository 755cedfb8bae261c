"""The client commands of `synthserve`: `run` and `jobs list|show|cancel|retry|results`.

argparse, like serve/worker/sidecar (one parser for the whole CLI; a bad argument exits 2,
as docs/api.md asks), with rich for the progress bar and tables."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from .. import formats, heap
from .http import Server, ServerError
from .output import OutputFile
from .run import BAD_ARGS, INTERRUPTED, SOME_FAILED, RunSpec, UsageError, load_rows, reattach, run_in_process, run_on_server

SERVER_ENV, API_KEY_ENV = "SYNTHSERVE_URL", "SYNTHSERVE_API_KEY"
DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a task or pipeline over a file (in process, or as a job on --server)")
    run.add_argument("name", nargs="?", metavar="NAME", help="task or pipeline (not with --job)")
    run.add_argument("--input", "-i", metavar="FILE", help=f"rows: {', '.join(formats.READABLE)} (none for generator tasks)")
    run.add_argument("--output", "-o", metavar="FILE", required=True,
                     help=f"{', '.join(formats.WRITABLE)}; an existing one is resumed (its rows are skipped)")
    run.add_argument("--params", metavar="JSON|@FILE", type=json_arg("--params"), default={}, help="the task's params")
    run.add_argument("--llm", metavar="JSON|@FILE", type=json_arg("--llm"), default={},
                     help='the request\'s llm object, e.g. {"generation_kwargs": {"temperature": 0.7}}')
    run.add_argument("--backend", help="a configured backend (default: the server's default)")
    run.add_argument("--max-new-tokens", type=int, metavar="N", help="llm.generation_kwargs.max_new_tokens")
    run.add_argument("--no-raw", dest="include_raw", action="store_false", help="leave out metadata.raw_input/raw_output")
    run.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                     help="read and write the server's LLM-call cache (default: the server's)")
    run.add_argument("--job", metavar="ID", help="follow a job already submitted (after Ctrl-C) into --output")
    run.add_argument("--config", help="in process: the TOML config (default: $SYNTHSERVE_CONFIG, else built-in)")
    add_server_arguments(run, default=None, help_suffix="; without it the run is in process")
    run.set_defaults(client=command_run)

    jobs = sub.add_parser("jobs", help="list, show, cancel, retry a server's jobs, or download results")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_sub.add_parser("list", help="the jobs, newest first")
    for name, help_text in (("show", "one job object"), ("cancel", "cancel a job"),
                            ("retry", "run again the rows that failed or did not finish")):
        jobs_sub.add_parser(name, help=help_text).add_argument("id", metavar="ID")
    retry = jobs_sub.choices["retry"]
    retry.add_argument("--refresh", action="store_true",
                       help="the retried rows call the backend afresh instead of the cache's answers "
                            "(an answer that could not be parsed is otherwise served again)")
    retry.add_argument("--max-cost-usd", type=float, metavar="USD", help="a new budget for the job's calls")
    results = jobs_sub.add_parser("results", help="download a job's results")
    results.add_argument("id", metavar="ID")
    results.add_argument("--output", "-o", metavar="FILE", required=True, help=", ".join(formats.WRITABLE))
    for parser in jobs_sub.choices.values():
        add_server_arguments(parser, default=os.environ.get(SERVER_ENV, DEFAULT_SERVER))
    jobs.set_defaults(client=command_jobs)


def add_server_arguments(parser: argparse.ArgumentParser, *, default: str | None, help_suffix: str = "") -> None:
    parser.add_argument("--server", metavar="URL", default=default,
                        help=f"the synthserve server (default: ${SERVER_ENV}, else {DEFAULT_SERVER}){help_suffix}"
                        if default else f"the synthserve server{help_suffix}")
    parser.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV),
                        help=f"sent as Authorization: Bearer KEY (default: ${API_KEY_ENV})")


def json_arg(option: str):
    def parse(text: str) -> dict[str, Any]:
        try:
            if text.startswith("@"):
                text = Path(text[1:]).read_text(encoding="utf-8")
            value = json.loads(text)
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    parse.__name__ = option  # argparse names the option in its message
    return parse


def fail(console: Console, message: str, status: int) -> int:
    console.print(f"[red]synthserve:[/red] {message}", highlight=False, soft_wrap=True)
    return status


def status_of(exc: ServerError) -> int:
    """4xx: the request was wrong (2); unreachable or 5xx: it did not run (1)."""
    return BAD_ARGS if 400 <= exc.status < 500 else SOME_FAILED


# ---- run ----

def command_run(args: argparse.Namespace) -> int:
    console = Console(stderr=False)
    err = Console(stderr=True)
    if (args.name is None) == (args.job is None):
        return fail(err, "give NAME (a task or pipeline) or --job ID, not both", BAD_ARGS)
    if args.job and not args.server:
        return fail(err, "--job follows a job on a server: give --server URL", BAD_ARGS)
    try:
        out = OutputFile(args.output)
        out.load()
    except formats.FormatError as exc:
        return fail(err, str(exc), BAD_ARGS)
    llm = dict(args.llm)
    if args.backend:
        llm["backend"] = args.backend
    if args.max_new_tokens is not None:
        llm["generation_kwargs"] = {**llm.get("generation_kwargs", {}), "max_new_tokens": args.max_new_tokens}

    async def main() -> int:
        if args.server is None:
            spec = RunSpec(args.name, out, await load_rows(args.input), args.params, llm, args.include_raw, args.cache)
            heap.settle()  # the input rows and the output file's rows so far live as long as the run
            from ..config import load_settings
            return await run_in_process(spec, load_settings(args.config), console)
        # No collection on the way to the submission: `follow` settles the heap (app.heap)
        # once the job is in, while the server works, and turns the collector back on
        gc.disable()
        async with Server(args.server, args.api_key) as server:
            # What NAME is there (a task or a pipeline) is asked while the input is read when a
            # run resumes (or reads nothing); a fresh run's rows go at once, as a task's, and
            # run_on_server asks only if the server has no such task. A bad input is still the
            # error reported, and nothing is submitted before it is read.
            kind = asyncio.ensure_future(server.kind(args.name)) if args.name and (out.rows or not args.input) else None
            try:
                rows = await load_rows(args.input)
            except BaseException:
                if kind is not None:
                    kind.cancel()
                    await asyncio.gather(kind, return_exceptions=True)
                raise
            spec = RunSpec(args.name, out, rows, args.params, llm, args.include_raw, args.cache)
            if args.job:
                return await reattach(args.job, out, server, console)
            return await run_on_server(spec, server, console, None if kind is None else await kind)

    try:
        return asyncio.run(main())
    except UsageError as exc:
        return fail(err, str(exc), BAD_ARGS)
    except ServerError as exc:
        return fail(err, str(exc), status_of(exc))
    except KeyboardInterrupt:
        return interrupted(out, args, err)
    finally:
        # The process ends next: its last collection need not walk what the run made (the
        # rows, and for Parquet pyarrow's and pandas' modules: ~0.05-0.3 s of the exit)
        gc.freeze()


def interrupted(out: OutputFile, args: argparse.Namespace, err: Console) -> int:
    """Ctrl-C: the finished rows go to the output; a server's job runs on."""
    if out.started:
        out.finish(detached=True)
    job = out.header.get("job")
    if args.server and job:
        err.print(f"\njob {job} keeps running on the server; {len(out.rows)} rows are in {out.path}. "
                  f"Reattach with:\n  synthserve run --job {job} --output {out.path} --server {args.server}",
                  highlight=False, soft_wrap=True)
    else:
        err.print(f"\nstopped; {len(out.rows)} rows are in {out.path}: run the same command again to resume",
                  highlight=False, soft_wrap=True)
    return INTERRUPTED


# ---- jobs ----

def command_jobs(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)

    async def main() -> int:
        async with Server(args.server, args.api_key) as server:
            if args.jobs_command == "list":
                print_jobs(console, await server.jobs())
            elif args.jobs_command == "results":
                path = Path(args.output)
                await server.download(args.id, formats.output_format(path), path)
                console.print(f"wrote {path}", highlight=False)
            else:
                if args.jobs_command == "retry":  # POST /jobs/{id}/retry's body: what the retry changes
                    body = {k: v for k, v in (("cache", "refresh" if args.refresh else None),
                                              ("max_cost_usd", args.max_cost_usd)) if v is not None}
                    console.print_json(data=await server.retry(args.id, body))
                else:
                    action = {"show": server.job, "cancel": server.cancel}[args.jobs_command]
                    console.print_json(data=await action(args.id))
        return 0

    try:
        return asyncio.run(main())
    except formats.FormatError as exc:
        return fail(err, str(exc), BAD_ARGS)
    except ServerError as exc:
        return fail(err, str(exc), status_of(exc))


def print_jobs(console: Console, jobs: list[dict[str, Any]]) -> None:
    """A table on a terminal; tab-separated lines, nothing cut, otherwise."""
    header = ("id", "task", "status", "progress", "failed", "tokens", "created")
    lines = []
    for job in jobs:
        p, usage = job["progress"], job.get("usage") or {}
        lines.append((job["id"], job.get("task") or job.get("pipeline") or "", job["status"],
                      f"{p['completed'] + p['failed']}/{p['total']}", str(p["failed"]),
                      f"{usage.get('input_tokens', 0) + usage.get('output_tokens', 0):,}", job["created_at"]))
    if not console.is_terminal:
        for line in (header, *lines):
            print("\t".join(line))
        return
    from rich.table import Table

    table = Table(*header, box=None)
    table.columns[0].no_wrap = True
    for line in lines:
        table.add_row(*line)
    console.print(table)
