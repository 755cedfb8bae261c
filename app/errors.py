"""The one exception tree of the service. Every error a request can meet is one of these;
app.main maps SynthserveError to HTTP once (`{"detail": ...}`, FastAPI's shape, with the
class's status), and app.sse to the `error` event of a stream that has begun.

    SynthserveError              status, detail (, headers)
    ├── NotFound                 404  unknown task or job (or another key's job)
    ├── InvalidInput             422  bad params, rows, template or backend name/capability
    ├── TooLarge                 413  too many rows, body too large
    ├── Unauthorized             401  missing or wrong API key
    ├── Overloaded               429  a backend has too many calls waiting (app.spend; Retry-After)
    └── Unavailable              503  the job store (Redis) is unreachable (Retry-After)

Raised elsewhere and mapped here:

    tasks.InputError             -> InvalidInput (app.runs): params that do not go together,
    └── tasks.RowError                a backend without a capability, a bad row (`field`)
    pydantic ValidationError     -> 422 (FastAPI's RequestValidationError for bodies;
                                    app.runs for a task's params)
    redis ConnectionError,       -> Unavailable (app.main), and an `error` event that ends
      TimeoutError                  open job event streams (app.jobs.follow)

Not requests' errors: a row's own failure marks only that row (llm_clients.LLMError ->
`llm_error`, tasks.ParseError -> `parse_error`); app.jobs.runner.JobSetupError fails a
job a worker cannot run; app.config.ConfigError and app.jobs.private.PrivateRedisError
stop the start-up with their message.
"""

from __future__ import annotations

from typing import Any


class SynthserveError(Exception):
    status_code = 500

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None):
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        self.headers = headers


class NotFound(SynthserveError):
    status_code = 404


class InvalidInput(SynthserveError):
    status_code = 422


class TooLarge(SynthserveError):
    status_code = 413


class Unauthorized(SynthserveError):
    status_code = 401


class _RetryLater(SynthserveError):
    def __init__(self, detail: Any, *, retry_after: float = 1.0):
        super().__init__(detail, headers={"Retry-After": str(max(1, round(retry_after)))})


class Overloaded(_RetryLater):
    status_code = 429


class Unavailable(_RetryLater):
    status_code = 503
