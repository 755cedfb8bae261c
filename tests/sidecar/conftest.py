"""The real embedded model (SmolLM2-135M-Instruct on CPU), loaded once for the session, and
the sidecar app serving it over real HTTP. Generations stay a few tokens long: the model
runs on two CPU cores shared with everything else."""

from __future__ import annotations

import asyncio

import pytest

from .server import run_sidecar

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
# Greedy SmolLM2 answers this with a long list of numbers: a generation that does not stop early.
COUNT = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]


@pytest.fixture(scope="session")
def engine():
    from sidecar.engine import get_engine

    return get_engine(device="cpu")  # on CPU even where there is a GPU: float32, as the tests expect


@pytest.fixture(scope="session")
def plain_model():
    """The same model as plain Transformers builds it, none of `sidecar.cpu`'s kernels:
    what the engine's results are checked against."""
    from sidecar.loading import load

    return load(device="cpu", optimize=False).model


@pytest.fixture(scope="session")
async def sidecar_url(engine):
    async with run_sidecar(engine) as url:
        yield url


async def first_tokens(tokens: list, n: int = 1, timeout_s: float = 60) -> None:
    """Wait until a generation collecting into `tokens` has produced `n` of them."""
    async with asyncio.timeout(timeout_s):
        while len(tokens) < n:
            await asyncio.sleep(0.01)


async def long_generation(engine, max_new_tokens: int = 40, *, after: int = 1) -> tuple[asyncio.Future, list]:
    """A greedy generation that does not stop early, once it has produced `after` tokens:
    its future and the list its tokens go on arriving in."""
    from sidecar.params import SamplingParams

    tokens: list = []
    future = engine.schedule(engine.apply_chat_template(COUNT), SamplingParams(max_new_tokens=max_new_tokens),
                             on_token=tokens.append)
    await first_tokens(tokens, after)
    return future, tokens
