"""Continuous batching: requests in, model steps out, all on one dedicated thread.

The batch is a left-padded set of running sequences sharing one key/value cache (of
SlackLayers). Each loop:

1. run one queued side job (an embedding batch), so jobs interleave with decode steps;
2. admit waiting requests while the batch has room: prefill them together (left-padded,
   within a token budget), choose their first token, and concatenate their cache onto the
   batch's, padding the shorter side on the left with masked zeros;
3. one decode step for the whole batch: every sequence gets one token chosen with its own
   parameters; finished (and cancelled) sequences leave the batch at once, and padding
   columns no remaining sequence needs are dropped.

A sequence with a grammar comes with its matcher already compiled (sidecar.grammar); each
step masks the logits of such rows only, so constrained and free rows share the step.

Transformers' own continuous batching (4.57: `generate_batch`, `init_continuous_batching`)
takes one GenerationConfig for all requests (only max_new_tokens per request) and cannot
size its paged cache without an accelerator, hence this loop.

Results go back through concurrent futures and an `on_token` callback, both called from
this thread; the engine turns them into asyncio futures for the event loop.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from . import decode, sampling
from .grammar import TokenMasks
from .kvcache import new_cache
from .params import MAX_BATCH_SIZE, EngineError, FinishReason, GenerationResult, SamplingParams, Token

log = logging.getLogger(__name__)

OnToken = Callable[[Token], Any]
PROMPT_CHUNK = 512  # prompt tokens per forward when their logprobs are asked for


class Detokenizer:
    """Incremental detokenization as TGI does it: a token's text is what it adds to the
    decoded text, held back while it ends in an incomplete UTF-8 character. A few prompt
    tokens give the first output token its context (leading spaces of SentencePiece)."""

    __slots__ = ("tokenizer", "ids", "prefix", "read")

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-5:])
        self.prefix = 0
        self.read = len(self.ids)

    def feed(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.ids = self.ids[self.read:]
            self.prefix, self.read = 0, len(self.ids)
            return after[len(before):]
        return ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class Sequence:
    """One generation request as the step loop sees it."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, *, seed: int | None,
                 detokenizer: Detokenizer, on_token: OnToken | None = None):
        self.prompt_ids = prompt_ids
        self.matcher = None  # an llguidance.LLMatcher, set before submit when params.grammar is given
        self.params = params
        self.seed = seed
        self.on_token = on_token
        self.detokenizer = detokenizer
        self.future: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        self.generator: torch.Generator | None = None
        self.out: list[int] = []
        self.tokens: list[Token] = []
        self.prefill: list[Token] = []
        self.text = ""

    # sampling.Row
    def seen_ids(self) -> list[int]:
        return self.prompt_ids + self.out

    def output_ids(self) -> list[int]:
        return self.out

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    def finish(self, reason: FinishReason, stop: str | None = None) -> None:
        result = GenerationResult(text=self.text, tokens=self.tokens, finish_reason=reason,
                                  input_tokens=len(self.prompt_ids), seed=self.seed, stop_sequence=stop,
                                  prefill=self.prefill)
        settle(self.future, result)

    def fail(self, exc: BaseException) -> None:
        settle(self.future, exc)


def settle(future: concurrent.futures.Future, outcome: Any) -> None:
    """Complete `future` unless its caller cancelled it meanwhile."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by its caller meanwhile


class Batcher:
    def __init__(self, model, tokenizer, *, eos_ids: set[int], max_batch_size: int = MAX_BATCH_SIZE,
                 max_batch_tokens: int = 65536, prefill_tokens: int = 4096):
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.eos_ids = frozenset(eos_ids)
        self.special_ids = frozenset(tokenizer.all_special_ids) | self.eos_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens  # prompt + max_new_tokens, summed over the batch
        self.prefill_tokens = prefill_tokens
        self.steps = 0  # decode steps run; tests compare these rather than wall time
        self._masks = TokenMasks(model.config.vocab_size, max_batch_size)
        self._cond = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._jobs: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._closed = False
        # the batch: touched only by the model thread
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None
        self._thread = threading.Thread(target=self._loop, name="synthserve-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- thread-safe API ----

    def submit(self, seq: Sequence) -> concurrent.futures.Future[GenerationResult]:
        with self._cond:
            if self._closed:
                raise EngineError("the engine is closed")
            self._inbox.append(seq)
            self._cond.notify()
        return seq.future

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the model thread between two steps."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise EngineError("the engine is closed")
            self._jobs.append((fn, future))
            self._cond.notify()
        return future

    @property
    def running(self) -> int:
        return len(self._running)

    # ---- the model thread ----

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._closed or self._inbox or self._jobs or self._waiting or self._running):
                        self._cond.wait()
                    if self._closed:
                        break
                    self._waiting.extend(self._inbox)
                    self._inbox.clear()
                    job = self._jobs.popleft() if self._jobs else None
                if job is not None:
                    self._run_job(*job)
                try:
                    self._admit()
                    if self._running:
                        self._step()
                except Exception as exc:  # a failed forward fails its batch, not the server
                    log.exception("model step failed")
                    for seq in self._running:
                        seq.fail(EngineError(f"generation failed: {exc}"))
                    self._running, self._cache, self._mask = [], None, None
        closed = EngineError("the engine is closed")
        for seq in [*self._running, *self._waiting, *self._inbox]:
            seq.fail(closed)
        for _, future in self._jobs:
            settle(future, closed)

    @staticmethod
    def _run_job(fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller, which raises it
            future.set_exception(exc)

    def _admit(self) -> None:
        batch: list[Sequence] = []
        longest = 0
        reserved = sum(_reserve(seq) for seq in self._running)
        while self._waiting and len(self._running) + len(batch) < self.max_batch_size:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            n = len(seq.prompt_ids)
            if batch and max(longest, n) * (len(batch) + 1) > self.prefill_tokens:
                break
            if reserved + _reserve(seq) > self.max_batch_tokens and (self._running or batch):
                break  # first come, first served: it waits for room rather than being overtaken
            batch.append(self._waiting.popleft())
            longest = max(longest, n)
            reserved += _reserve(seq)
        if not batch:
            return
        try:
            self._prefill(batch, longest)
        except Exception as exc:
            log.exception("prefill failed")
            for seq in batch:
                seq.fail(EngineError(f"prefill failed: {exc}"))

    def _prefill(self, batch: list[Sequence], length: int) -> None:
        ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, length - len(seq.prompt_ids):] = torch.tensor(seq.prompt_ids)
            mask[row, length - len(seq.prompt_ids):] = 1
            if seq.params.sampling:
                seq.generator = torch.Generator(self.device).manual_seed(seq.seed)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = new_cache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        for seq in batch:
            if seq.params.decoder_input_details:
                seq.prefill = self._prompt_tokens(seq.prompt_ids)
        keep = self._advance(batch, out.logits[:, -1])
        if not keep:
            return
        if len(keep) < len(batch):
            index = torch.tensor(keep, device=self.device)
            cache.batch_select_indices(index)
            mask = mask.index_select(0, index)
        self._merge([batch[i] for i in keep], cache, mask)

    def _prompt_tokens(self, ids: list[int]) -> list[Token]:
        """TGI's `prefill`: each prompt token with its logprob given the ones before it (the
        first has none). A forward of its own, in chunks, so the logits held stay small."""
        logprobs = [math.nan]
        cache = new_cache()
        for start in range(0, len(ids) - 1, PROMPT_CHUNK):
            chunk = torch.tensor([ids[start:start + PROMPT_CHUNK]], device=self.device)
            logits = self.model(input_ids=chunk, past_key_values=cache, use_cache=True).logits[0].float()
            targets = torch.tensor(ids[start + 1:start + 1 + PROMPT_CHUNK], device=self.device)
            logprobs += logits[:len(targets)].log_softmax(-1).gather(1, targets[:, None])[:, 0].tolist()
        return [Token(i, self._text(i), lp, i in self.special_ids) for i, lp in zip(ids, logprobs, strict=True)]

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _merge(self, seqs: list[Sequence], cache: Cache, mask: torch.Tensor) -> None:
        if self._cache is None:
            self._running, self._cache, self._mask = seqs, cache, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.replace(torch.cat([_left_pad(old.keys, length), _left_pad(new.keys, length)]),
                        torch.cat([_left_pad(old.values, length), _left_pad(new.values, length)]))
        self._mask = torch.cat([_left_pad(self._mask, length), _left_pad(mask, length)])
        self._running = self._running + seqs

    def _step(self) -> None:
        alive = [i for i, seq in enumerate(self._running) if not seq.cancelled]
        if len(alive) < len(self._running):
            self._select(alive)
            if not self._running:
                return
        seqs = self._running
        last = torch.tensor([[seq.out[-1]] for seq in seqs], device=self.device)
        position = torch.tensor([[len(seq.prompt_ids) + len(seq.out) - 1] for seq in seqs], device=self.device)
        mask = torch.cat([self._mask, self._mask.new_ones((len(seqs), 1))], dim=1)
        logits = decode.step(self.model, last, mask, position, self._cache)  # the fused step where it serves
        self._mask = mask
        self.steps += 1
        keep = self._advance(seqs, logits)
        if len(keep) < len(seqs):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Keep only the rows `keep` of the batch, then drop leading columns that are
        padding in every remaining row."""
        if not keep:
            self._running, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._running = [self._running[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._mask = self._mask.index_select(0, index)
        lead = int(self._mask.argmax(dim=1).min())  # rows are 0...0 1...1
        if lead:
            self._mask = self._mask[:, lead:]
            for layer in self._cache.layers:
                layer.replace(layer.keys[:, :, lead:], layer.values[:, :, lead:])

    def _advance(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Append each sequence's next token; the rows that go on."""
        constrained = [(row, seq.matcher) for row, seq in enumerate(seqs) if seq.matcher is not None]
        broken = set(self._masks.apply(logits, constrained)) if constrained else ()
        ids, logprobs, tops = sampling.choose(logits, seqs)
        keep = []
        for row, (seq, token_id, logprob, top) in enumerate(zip(seqs, ids, logprobs, tops, strict=True)):
            if row in broken:
                seq.fail(EngineError(f"the grammar cannot go on: {seq.matcher.get_error()}"))
            elif not seq.cancelled and not self._append(seq, token_id, logprob, top):
                keep.append(row)
        return keep

    def _append(self, seq: Sequence, token_id: int, logprob: float, top: list[tuple[int, float]]) -> bool:
        """Add one token to `seq`, tell its caller; whether it has finished."""
        seq.out.append(token_id)
        if seq.matcher is not None:
            seq.matcher.consume_token(token_id)  # a refused token leaves it in error: the next mask fails the row
        special = token_id in self.special_ids
        text = seq.detokenizer.feed(token_id)
        token = Token(token_id, text, logprob, special,
                      tuple(Token(i, self._text(i), lp, i in self.special_ids) for i, lp in top))
        seq.tokens.append(token)
        stop = None
        if not special and text:
            seq.text += text
            stop = next((s for s in seq.params.stop if s in seq.text[-(len(s) + len(text)):]), None)
        if seq.on_token is not None:
            try:
                seq.on_token(token)
            except RuntimeError:  # its event loop is gone: nobody is listening
                seq.future.cancel()
                return True
        if token_id in self.eos_ids:
            seq.finish("eos_token")
        elif stop is not None:
            seq.finish("stop_sequence", stop)
        elif len(seq.out) >= seq.params.max_new_tokens:
            seq.finish("length")
        else:
            return False
        return True


def _reserve(seq: Sequence) -> int:
    return len(seq.prompt_ids) + seq.params.max_new_tokens


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """Pad the sequence dimension (dim 1 of a mask, dim 2 of a key/value tensor) on the left."""
    missing = length - (t.shape[1] if t.dim() == 2 else t.shape[2])
    if not missing:
        return t
    return F.pad(t, (missing, 0)) if t.dim() == 2 else F.pad(t, (0, 0, missing, 0))
