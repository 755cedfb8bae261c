from tests.client.conftest import service  # noqa: F401  (a real serve + worker on the tests' own Redis)
