"""The one exception tree of the service, mapped to HTTP once (app.main) and to the SSE
`error` event (app.sse).

    SynthserveError              status, detail
    ├── NotFound                 404  unknown task, job or backend route
    ├── InvalidInput             422  bad body, params, rows, template, backend capability
    ├── TooLarge                 413  too many rows, body too large
    ├── Unauthorized             401  missing or wrong API key
    ├── Overloaded               429  queue full (carries retry_after)
    └── BackendUnavailable       502  the backend is unreachable or misconfigured as a whole

Row-level failures are not here: llm_clients.base.LLMError and tasks.base.ParseError
mark their own row and never fail a request.
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


class Overloaded(SynthserveError):
    status_code = 429

    def __init__(self, detail: Any, *, retry_after: float = 1.0):
        super().__init__(detail, headers={"Retry-After": str(max(1, round(retry_after)))})


class BackendUnavailable(SynthserveError):
    status_code = 502
