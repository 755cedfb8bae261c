"""The jobs tests' fixtures (a redis-server on a free port, worker subprocesses) for the
pipeline-job tests."""

from tests.jobs.conftest import rds, redis_server, workers  # noqa: F401
