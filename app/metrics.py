"""Prometheus metrics, served at `GET /metrics`.

One CollectorRegistry per app, built in the lifespan (`Metrics(state)`), so two apps in one
process (tests) never share counters. What is counted where:

    synthserve_http_requests_total{method,route,status}     app.middleware.AccessLog
    synthserve_http_request_duration_seconds{method,route}  app.middleware.AccessLog
    synthserve_task_requests_total{task,status}             app.middleware.AccessLog
    synthserve_rows_generated_total{task}                   rows answered (failed ones included) by /tasks,
                                                            and job rows run by this process's worker (the
                                                            API's own, in the default set-up; app.jobs.worker)
    synthserve_rows_failed_total{task}                      those rows with an `error`
    synthserve_llm_calls_total{backend}                     CallPolicy.observer, once per call
    synthserve_llm_call_errors_total{backend}                 (a call = all its attempts)
    synthserve_llm_call_duration_seconds{backend}           histogram, retries and backoff included
    synthserve_llm_tokens_total{backend,direction}          input / output
    synthserve_llm_retries_total{backend}                   read from CallPolicy at scrape time
    synthserve_llm_in_flight{backend}                         "
    synthserve_llm_max_concurrency{backend}                   "
    synthserve_llm_concurrency_limit{backend}                 " (the adaptive limit now)
    synthserve_llm_throttled_total{backend}                   " (attempts answered 429)
    synthserve_llm_calls_waiting{backend}                     " (calls queued for a slot)
    synthserve_cache_hits_total, _misses_total              read from the call cache (app.spend) at scrape time
    synthserve_sse_streams_open                             app.sse.SSEResponse
    synthserve_jobs_queue_depth                             `await state.jobs.queue_depth()` at scrape time,
                                                            when the job store has it (else -1)

The per-call hook costs a few microseconds (label children are bound once per backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llm_clients.base import Completion

from .auth import metrics_access

if TYPE_CHECKING:
    from .state import AppState

log = logging.getLogger("synthserve.metrics")
router = APIRouter(tags=["health"])

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LLM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
QUEUE_DEPTH_TIMEOUT_S = 2.0


class BackendCollector(Collector):
    """Reads each backend's CallPolicy counters when scraped: no hook on the hot path."""

    def __init__(self, state: AppState):
        self.state = state

    def collect(self):
        retries = CounterMetricFamily("synthserve_llm_retries", "LLM call attempts retried", labels=["backend"])
        in_flight = GaugeMetricFamily("synthserve_llm_in_flight", "LLM requests in flight", labels=["backend"])
        limit = GaugeMetricFamily("synthserve_llm_max_concurrency", "limit on LLM requests in flight",
                                  labels=["backend"])
        current = GaugeMetricFamily("synthserve_llm_concurrency_limit",
                                    "in-flight limit now (moves between 1 and max_concurrency with adaptive)",
                                    labels=["backend"])
        throttled = CounterMetricFamily("synthserve_llm_throttled", "LLM call attempts answered 429",
                                        labels=["backend"])
        waiting = GaugeMetricFamily("synthserve_llm_calls_waiting", "LLM calls waiting for a slot",
                                    labels=["backend"])
        for name, client in self.state.backends.items():
            policy = client.policy
            retries.add_metric([name], policy.retries)
            in_flight.add_metric([name], policy.in_flight)
            limit.add_metric([name], policy.max_concurrency)
            current.add_metric([name], policy.limit)
            throttled.add_metric([name], policy.throttled)
            waiting.add_metric([name], policy.slots.waiting)
        yield from (retries, in_flight, limit, current, throttled, waiting)
        cache = self.state.spend.cache if self.state.spend is not None else None
        if cache is not None:
            yield CounterMetricFamily("synthserve_cache_hits", "LLM calls answered from the call cache",
                                      value=cache.hits)
            yield CounterMetricFamily("synthserve_cache_misses",
                                      "LLM calls looked up in the call cache and not found", value=cache.misses)


class Metrics:
    def __init__(self, state: AppState):
        self.state = state
        self.registry = r = CollectorRegistry()
        self.http_requests = Counter("synthserve_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=r)
        self.http_duration = Histogram("synthserve_http_request_duration_seconds",
                                       "HTTP request duration (for streams, until the stream ends)",
                                       ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.task_requests = Counter("synthserve_task_requests", "POST /tasks/{name} requests by task and status",
                                     ["task", "status"], registry=r)
        self.rows_generated = Counter("synthserve_rows_generated", "rows answered, failed ones included",
                                      ["task"], registry=r)
        self.rows_failed = Counter("synthserve_rows_failed", "rows answered with an error", ["task"], registry=r)
        self.llm_calls = Counter("synthserve_llm_calls", "LLM calls (a call is all its attempts)",
                                 ["backend"], registry=r)
        self.llm_errors = Counter("synthserve_llm_call_errors", "LLM calls that failed after retries",
                                  ["backend"], registry=r)
        self.llm_duration = Histogram("synthserve_llm_call_duration_seconds",
                                      "LLM call duration, waiting for a slot, retries and backoff included",
                                      ["backend"], buckets=LLM_BUCKETS, registry=r)
        self.llm_tokens = Counter("synthserve_llm_tokens", "tokens reported by the backend",
                                  ["backend", "direction"], registry=r)
        self.sse_streams = Gauge("synthserve_sse_streams_open", "server-sent event streams open", registry=r)
        self.jobs_queue_depth = Gauge("synthserve_jobs_queue_depth",
                                      "job work queued or running, as the job store counts it (-1: unknown)",
                                      registry=r)
        self._request_children: dict[tuple, tuple] = {}
        r.register(BackendCollector(state))
        for name, client in state.backends.items():
            client.policy.observer = self.llm_observer(name)

    # ---- hooks ----

    def llm_observer(self, backend: str) -> Callable[[float, Any], None]:
        """The CallPolicy hook: `observe(seconds, result)`, result None for a failed call."""
        calls, errors = self.llm_calls.labels(backend), self.llm_errors.labels(backend)
        duration = self.llm_duration.labels(backend)
        tokens_in, tokens_out = self.llm_tokens.labels(backend, "input"), self.llm_tokens.labels(backend, "output")

        def observe(seconds: float, result: Any) -> None:
            calls.inc()
            duration.observe(seconds)
            if result is None:
                errors.inc()
                return
            for c in (result if isinstance(result, list) else (result,)):
                if not isinstance(c, Completion):
                    return  # embeddings: no token counts
                tokens_in.inc(c.usage.input_tokens)
                tokens_out.inc(c.usage.output_tokens)

        return observe

    def observe_request(self, method: str, route: str, status: int, seconds: float, task: str | None = None) -> None:
        """One HTTP request (the access middleware). Label children are cached: `labels()`
        takes a lock and builds a key on every call."""
        key = (method, route, status, task)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
                None if task is None else self.task_requests.labels(task, str(status)))
        count, duration, task_count = children
        count.inc()
        duration.observe(seconds)
        if task_count is not None:
            task_count.inc()

    def count_rows(self, task: str, rows: int, failed: int) -> None:
        """Rows answered by a request or a job chunk."""
        if rows:
            self.rows_generated.labels(task).inc(rows)
        if failed:
            self.rows_failed.labels(task).inc(failed)

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[None]:
        self.sse_streams.inc()
        try:
            yield
        finally:
            self.sse_streams.dec()

    # ---- exposition ----

    async def refresh(self) -> None:
        """Values that need I/O, read just before a scrape."""
        if self.state.jobs is None:
            self.jobs_queue_depth.set(0)
            return
        try:
            depth = await asyncio.wait_for(self.state.jobs.queue_depth(), QUEUE_DEPTH_TIMEOUT_S)
            self.jobs_queue_depth.set(depth)
        except Exception as exc:  # Redis down: the scrape still answers, the gauge says unknown
            log.warning("cannot read the job queue depth: %s", exc)
            self.jobs_queue_depth.set(-1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@contextlib.contextmanager
def open_stream(scope: dict) -> Iterator[None]:
    """Count an SSE stream as open while the block runs (no-op outside a synthserve app)."""
    app = scope.get("app")
    state = getattr(getattr(app, "state", None), "synth", None)
    metrics = getattr(state, "metrics", None)
    if metrics is None:
        yield
        return
    with metrics.open_stream():
        yield


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.synth.metrics
    await m.refresh()
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
