"""The call cache against the mock server and a real Redis: a stored answer is served only
to a call whose key matches in every field, `cache: false` is exact, `refresh` overwrites,
and every call is priced."""

from __future__ import annotations

import pytest

from llm_clients.base import GenerationKwargs
from llm_clients.cache import CallCache
from llm_clients.mistral import MistralClient
from llm_clients.openai import OpenAIClient
from llm_clients.tgi import TGIClient
from tests.llm_clients.helpers import USER, backend, policy

KW = GenerationKwargs(temperature=0.7, max_new_tokens=20)


def openai(url: str, **fields) -> OpenAIClient:
    return OpenAIClient("mock", backend("openai", url, **fields), policy())


@pytest.fixture
async def cache(aredis):
    return CallCache(aredis, ttl_s=60)


@pytest.fixture
async def clients(mock):
    made = []

    def make(cls, base_url, **fields):
        client = cls("mock", backend(cls.provider, base_url, **fields), policy())
        made.append(client)
        return client

    yield make
    for c in made:
        await c.aclose()


async def test_a_rerun_is_answered_from_the_cache(mock, cache, clients):
    mock.script([{"reply": ["first", "second", "third"]}])
    llm = clients(OpenAIClient, mock.openai_url)
    (first,) = await cache.client(llm).chat(USER, KW)
    (again,) = await cache.client(llm).chat(USER, KW)  # a new request: occurrence 0 again
    assert mock.stats()["requests"] == 1
    assert again.text == first.text == "first"
    assert again.usage.cached_calls == 1 and first.usage.cached_calls == 0
    assert (again.usage.input_tokens, again.usage.output_tokens) == (first.usage.input_tokens, first.usage.output_tokens)
    assert cache.hits == 1 and cache.misses == 1


async def test_identical_calls_in_one_request_get_distinct_samples_and_the_same_ones_again(mock, cache, clients):
    mock.script([{"reply": ["a", "b", "c", "d"]}])
    llm = clients(OpenAIClient, mock.openai_url)
    run = cache.client(llm)
    first = [(await run.chat(USER, KW))[0].text for _ in range(3)]
    assert first == ["a", "b", "c"]
    rerun = cache.client(llm)
    assert [(await rerun.chat(USER, KW))[0].text for _ in range(3)] == first
    assert mock.stats()["requests"] == 3
    (fourth,) = await rerun.chat(USER, KW)  # a 4th occurrence was never stored
    assert fourth.text == "d" and mock.stats()["requests"] == 4


# Each case: a call differing from the stored one in exactly one field of the key.
DIFFERENT = {
    "model": lambda c, llm: c.client(llm).chat(USER, KW, model="other-model"),
    "messages: content": lambda c, llm: c.client(llm).chat([{"role": "user", "content": "hello there!"}], KW),
    "messages: role": lambda c, llm: c.client(llm).chat([{"role": "system", "content": "hello there"}], KW),
    "messages: one more": lambda c, llm: c.client(llm).chat([{"role": "system", "content": "terse"}, *USER], KW),
    "kwargs: temperature": lambda c, llm: c.client(llm).chat(USER, GenerationKwargs(temperature=0.8, max_new_tokens=20)),
    "kwargs: max_new_tokens": lambda c, llm: c.client(llm).chat(USER, GenerationKwargs(temperature=0.7, max_new_tokens=21)),
    "kwargs: seed": lambda c, llm: c.client(llm).chat(USER, GenerationKwargs(temperature=0.7, max_new_tokens=20, seed=1)),
    "kwargs: stop": lambda c, llm: c.client(llm).chat(USER, GenerationKwargs(temperature=0.7, max_new_tokens=20, stop=["x"])),
    "kwargs: top_p": lambda c, llm: c.client(llm).chat(USER, GenerationKwargs(temperature=0.7, max_new_tokens=20, top_p=0.5)),
    "n": lambda c, llm: c.client(llm).chat(USER, KW, n=2),
    "structured-output schema": lambda c, llm: c.client(llm).chat(
        USER, KW.with_json_schema({"type": "object", "properties": {"a": {"type": "string"}}})),
}


@pytest.mark.parametrize("field", sorted(DIFFERENT))
async def test_a_call_differing_in_one_field_is_not_served_the_stored_answer(field, mock, cache, clients):
    llm = clients(OpenAIClient, mock.openai_url)
    await cache.client(llm).chat(USER, KW)
    await cache.client(llm).chat(USER, KW)
    assert mock.stats()["requests"] == 1  # stored, and served to the identical call
    await DIFFERENT[field](cache, llm)
    assert mock.stats()["requests"] == 2 and cache.hits == 1


async def test_another_provider_or_base_url_is_another_key(mock, cache, clients):
    await cache.client(clients(OpenAIClient, mock.openai_url)).chat(USER, KW)
    await cache.client(clients(MistralClient, mock.url)).chat(USER, KW)  # same server, other provider
    assert mock.stats()["requests"] == 2
    alias = mock.openai_url.replace("127.0.0.1", "localhost")  # same server, other base URL
    await cache.client(clients(OpenAIClient, alias)).chat(USER, KW)
    assert mock.stats()["requests"] == 3 and cache.hits == 0


async def test_the_call_kind_is_part_of_the_key(mock, cache, clients):
    tgi = clients(TGIClient, mock.url)
    tgi.capabilities |= {"embed"}  # the mock serves /embed as the sidecar does (start() checks for the sidecar)
    await cache.client(tgi).chat([{"role": "user", "content": "hello there"}], KW)
    await cache.client(tgi).complete("hello there", KW)
    await cache.client(tgi).embed(["hello there"])
    assert sum(mock.stats()["by_route"].values()) == 3 and cache.hits == 0
    vectors = await cache.client(tgi).embed(["hello there"])
    (completion,) = [await cache.client(tgi).complete("hello there", KW)]
    assert cache.hits == 2 and sum(mock.stats()["by_route"].values()) == 3
    assert len(vectors) == 1 and len(vectors[0]) == 16 and completion.text == "Echo: hello there"


async def test_cache_false_is_exact(mock, cache, clients, aredis):
    llm = clients(OpenAIClient, mock.openai_url)
    await cache.client(llm, True).chat(USER, KW)
    for _ in range(3):
        await cache.client(llm, False).chat(USER, KW)
    assert mock.stats()["requests"] == 4  # every call reached the mock, though one was stored
    assert cache.hits == 0 and await aredis.dbsize() == 1  # and none of them stored anything


async def test_refresh_calls_again_and_overwrites(mock, cache, clients):
    mock.script([{"reply": ["old", "new"]}])
    llm = clients(OpenAIClient, mock.openai_url)
    await cache.client(llm).chat(USER, KW)
    (fresh,) = await cache.client(llm, "refresh").chat(USER, KW)
    (served,) = await cache.client(llm).chat(USER, KW)
    assert fresh.text == served.text == "new" and mock.stats()["requests"] == 2


async def test_a_streamed_call_shares_the_plain_calls_entry(mock, cache, clients):
    llm = clients(OpenAIClient, mock.openai_url)
    (plain,) = await cache.client(llm).chat(USER, KW)
    deltas: list[str] = []
    streamed = await cache.client(llm).stream_chat(USER, KW, on_delta=deltas.append)
    assert streamed.text == plain.text == "".join(deltas) and mock.stats()["requests"] == 1


async def test_calls_are_priced_and_hits_cost_nothing(mock, cache, clients):
    llm = clients(OpenAIClient, mock.openai_url, price_input_per_mtok=2.0, price_output_per_mtok=8.0)
    (paid,) = await cache.client(llm).chat(USER, KW)
    (free,) = await cache.client(llm).chat(USER, KW)
    usage = paid.usage
    assert usage.cost_usd == pytest.approx((usage.input_tokens * 2 + usage.output_tokens * 8) / 1e6)
    assert usage.cost_usd > 0 and free.usage.cost_usd == 0
    (unstored,) = await cache.client(llm, False).chat(USER, KW)
    assert unstored.usage.cost_usd == usage.cost_usd


async def test_a_disabled_cache_neither_reads_nor_writes(mock, aredis, clients):
    cache = CallCache(aredis, ttl_s=60, enabled=False)
    llm = clients(OpenAIClient, mock.openai_url)
    await cache.client(llm).chat(USER, KW)
    await cache.client(llm).chat(USER, KW)
    assert mock.stats()["requests"] == 2 and await aredis.dbsize() == 0


async def test_entries_expire_after_the_ttl(mock, aredis, clients):
    cache = CallCache(aredis, ttl_s=3600)
    await cache.client(clients(OpenAIClient, mock.openai_url)).chat(USER, KW)
    (key,) = await aredis.keys("synthserve:cache:*")
    assert 3500_000 < await aredis.pttl(key) <= 3600_000
