"""The local model engine: one loaded causal LM, its tokenizer and the batcher thread that
runs every forward pass. No HTTP here; the sidecar app and the in-process `local` provider
are two fronts on the same engine (`get_engine`).

The thread-safe entry points (`submit`, `embedder.submit`) hand work to the model thread
and return concurrent futures; the async ones (`schedule`, `generate`, `embed`) wrap them
for the event loop, on which no model code ever runs.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from . import loading
from .batcher import Batcher, Detokenizer
from .batcher import Sequence as Request
from .embedding import Embedder
from .grammar import Grammars
from .params import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_BATCH_SIZE,
    MAX_CONCURRENT_REQUESTS,
    EngineError,
    GenerationResult,
    InvalidRequest,
    Overloaded,
    SamplingParams,
    Token,
)

__all__ = ["Engine", "GenerationResult", "SamplingParams", "Token", "get_engine"]

Message = dict[str, Any]
EmbedInput = str | list[Message]

log = logging.getLogger(__name__)

KV_BUDGET_BYTES = 2 << 30  # key/value cache the batch may reserve, when max_batch_tokens is not given


class Engine:
    def __init__(self, loaded: loading.Loaded, *, max_batch_size: int = MAX_BATCH_SIZE,
                 max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS,
                 max_batch_tokens: int | None = None, embed_batch_size: int = 64, embed_batch_tokens: int = 8192):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_id = loaded.model_id
        self.max_concurrent_requests = max_concurrent_requests
        config = self.model.config
        self.hidden_size: int = config.hidden_size
        self.max_total_tokens: int = getattr(config, "max_position_embeddings", None) or 4096
        if max_batch_tokens is None:
            max_batch_tokens = max(self.max_total_tokens, KV_BUDGET_BYTES // _kv_bytes_per_token(self.model))
        self.max_batch_tokens = max_batch_tokens
        self.max_total_tokens = min(self.max_total_tokens, max_batch_tokens)
        self._in_flight = 0
        self._lock = threading.Lock()
        eos_ids = _eos_ids(self.model, self.tokenizer)
        self.batcher = Batcher(self.model, self.tokenizer, eos_ids=eos_ids,
                               max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens)
        self.grammars = Grammars(self.tokenizer, vocab_size=config.vocab_size, eos_ids=eos_ids)
        self.embedder = Embedder(self.model, self.batcher, batch_size=embed_batch_size,
                                 batch_tokens=embed_batch_tokens)
        self.batcher.start()

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None, **options: Any) -> Engine:
        if loading.resolve_device(device).type == "cpu":
            torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else os.cpu_count() or 1)
        # Loaded and set up (forwards to check, buffers to fill) on a thread of its own that
        # then ends. OpenMP (torch's libgomp) keeps a pool of workers for every thread that
        # starts parallel work; with a second pool alive beside the model thread's, libgomp
        # counts itself oversubscribed and its workers sleep at every barrier instead of
        # spinning: a one-sequence decode step took 15 ms on 2 cores instead of 10. A thread
        # that ends takes its pool with it, so the model thread's is the only one.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="synthserve-load") as pool:
            return pool.submit(lambda: cls(loading.load(model, device), **options)).result()

    def close(self) -> None:
        self.grammars.close()
        self.batcher.close()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_dtype": str(self.model.dtype),
            "model_device_type": self.device.type,
            "max_input_tokens": self.max_total_tokens - 1,
            "max_total_tokens": self.max_total_tokens,
            "max_batch_size": self.batcher.max_batch_size,
            "max_batch_total_tokens": self.max_batch_tokens,
            "max_concurrent_requests": self.max_concurrent_requests,
            "hidden_size": self.hidden_size,
        }

    # ---- text ----

    def apply_chat_template(self, messages: list[Message]) -> str:
        """The chat template applied, generation prompt added."""
        try:
            return self.tokenizer.apply_chat_template(_plain(messages), tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 errors raised by the template itself (bad roles, ...)
            raise InvalidRequest(f"cannot apply the chat template: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw prompt. The tokenizer's BOS is added unless the text already
        starts with it (a chat-templated prompt often does)."""
        bos = self.tokenizer.bos_token
        add = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add)["input_ids"]

    def tokenize(self, text: str) -> list[dict[str, Any]]:
        """TGI's /tokenize answer: id, text and character span of each token."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [{"id": i, "text": text[a:b], "start": a, "stop": b}
                for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]

    # ---- generation ----

    def submit(self, inputs: str | list[int], params: SamplingParams, *,
               on_token: Callable[[Token], Any] | None = None,
               truncate: int | None = None) -> concurrent.futures.Future[GenerationResult]:
        """Queue one generation (thread-safe). `on_token` is called on the model thread.
        Raises Overloaded when the queue is full, InvalidRequest when it cannot fit."""
        ids = self.encode(inputs) if isinstance(inputs, str) else list(inputs)
        if truncate:
            ids = ids[-truncate:]
        if not ids:
            raise InvalidRequest("`inputs` must not be empty")
        max_new = params.max_new_tokens
        if max_new is None:
            max_new = min(DEFAULT_MAX_NEW_TOKENS, self.max_total_tokens - len(ids))
            if max_new < 1:
                raise InvalidRequest(f"`inputs` has {len(ids)} tokens; the limit is {self.max_total_tokens - 1}")
            params = params.replace(max_new_tokens=max_new)
        if len(ids) + max_new > self.max_total_tokens:
            raise InvalidRequest(f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                                 f"Given: {len(ids)} `inputs` tokens and {max_new} `max_new_tokens`")
        seed = params.seed
        if params.sampling and seed is None:
            seed = random.getrandbits(63)
        request = Request(ids, params, seed=seed if params.sampling else None,
                          detokenizer=Detokenizer(self.tokenizer, ids), on_token=on_token)
        self._acquire()
        try:
            future = self.batcher.submit(request) if params.grammar is None else self._submit_constrained(request)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _submit_constrained(self, request: Request) -> concurrent.futures.Future[GenerationResult]:
        """Queue `request` once its grammar is compiled (on the grammar thread, so the batch
        steps on meanwhile); a grammar that does not compile fails it with InvalidRequest."""
        def compiled(matcher: concurrent.futures.Future) -> None:
            try:
                request.matcher = matcher.result()
                self.batcher.submit(request)
            except EngineError as exc:
                request.fail(exc)
            except Exception as exc:  # llguidance's own errors: a bug there, not the request's
                request.fail(EngineError(f"cannot compile the grammar: {exc}"))

        self.grammars.matcher(request.params.grammar).add_done_callback(compiled)
        return request.future

    def schedule(self, inputs: str | list[int], params: SamplingParams, *,
                 on_token: Callable[[Token], Any] | None = None,
                 truncate: int | None = None) -> asyncio.Future[GenerationResult]:
        """`submit` for async code: the result as a future of the running loop, on which
        `on_token` is called too, every call before the future resolves (both go through
        call_soon_threadsafe, in order). Raises at once, as `submit` does; cancelling the
        future takes the request off the batch."""
        emit = None
        if on_token is not None:
            emit = partial(asyncio.get_running_loop().call_soon_threadsafe, on_token)
        return asyncio.wrap_future(self.submit(inputs, params, on_token=emit, truncate=truncate))

    async def generate(self, inputs: str | list[int], params: SamplingParams, *,
                       on_token: Callable[[Token], Any] | None = None,
                       truncate: int | None = None) -> GenerationResult:
        """Generate on the model thread (see `schedule`)."""
        return await self.schedule(inputs, params, on_token=on_token, truncate=truncate)

    # ---- embeddings ----

    async def embed(self, inputs: Sequence[EmbedInput], *, normalize: bool = False) -> list[list[float]]:
        """Final hidden state of the base model (no LM head) at the last token of each
        chat-templated input (generation prompt added), as distilabel's GenerateEmbeddings.
        Texts of concurrent calls are batched together."""
        return (await self.embed_counted(inputs, normalize=normalize))[0]

    async def embed_counted(self, inputs: Sequence[EmbedInput], *,
                            normalize: bool = False) -> tuple[list[list[float]], int]:
        """`embed`, and the number of tokens embedded."""
        if not inputs:
            return [], 0
        self._acquire()
        try:
            ids = await asyncio.to_thread(self._embed_ids, inputs)
            futures = self.embedder.submit(ids, normalize=normalize)
            try:
                return list(await asyncio.gather(*map(asyncio.wrap_future, futures))), sum(map(len, ids))
            finally:
                for future in futures:
                    future.cancel()  # no-op once done; otherwise they leave the queue
        finally:
            self._release()

    def _embed_ids(self, inputs: Sequence[EmbedInput]) -> list[list[int]]:
        texts = [self.apply_chat_template([{"role": "user", "content": x}] if isinstance(x, str) else x)
                 for x in inputs]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for one in ids:
            if len(one) > self.max_total_tokens:
                raise InvalidRequest(f"an input has {len(one)} tokens; the limit is {self.max_total_tokens}")
        return ids

    # ---- back-pressure ----

    def _acquire(self) -> None:
        with self._lock:
            if self._in_flight >= self.max_concurrent_requests:
                raise Overloaded(f"model is overloaded: {self._in_flight} requests in flight")
            self._in_flight += 1

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


def _kv_bytes_per_token(model) -> int:
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * model.dtype.itemsize


def _plain(messages: list[Message]) -> list[Message]:
    """OpenAI content parts flattened to text, which every chat template understands."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append({**m, "content": content if content is not None else ""})
    return out


_engines: dict[tuple[str | None, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(model: str | None = None, device: str | None = None, **options: Any) -> Engine:
    """The process's engine for `model` on `device`, loaded on first use (blocking: call
    it in a thread from async code). Every caller with the same model and device shares
    it; `options` (Engine's limits) apply when it is loaded."""
    key = (model, str(loading.resolve_device(device)))
    with _engines_lock:  # held while loading, so concurrent first callers wait for one load
        engine = _engines.get(key)
        if engine is None:
            if not _engines:
                atexit.register(_close_engines)
            # seconds of silence otherwise: say when the model starts loading and when it is ready
            log.info("loading model %s on %s", model or "SmolLM2-135M-Instruct (embedded)", key[1])
            started = time.monotonic()
            engine = _engines[key] = Engine.load(model, device, **options)
            log.info("model %s ready on %s (%.1f s)", engine.model_id, key[1], time.monotonic() - started)
        return engine


def _close_engines() -> None:
    # Stop the model threads before the interpreter tears torch down under them (a daemon
    # thread left inside torch at exit aborted the process: "terminate called without an
    # active exception").
    with _engines_lock:
        for engine in _engines.values():
            engine.close()
        _engines.clear()
