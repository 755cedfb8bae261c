import pytest

from tests.service import mock_settings, serve


@pytest.fixture
async def service(mock):
    """The real app over HTTP, one backend `mock` (openai provider, max_concurrency 8)."""
    async with serve(mock_settings(mock.url)) as client:
        yield client
