"""Constrained decoding with llguidance: a grammar (a JSON schema or a regex) becomes, at
every step, a mask of the tokens that keep the output inside it.

Why llguidance: of the three maintained engines that install from PyPI here (Python 3.11,
CPU, torch 2.13), xgrammar pulls in triton, numpy and apache-tvm-ffi; outlines-core and
llguidance have no dependencies. Measured on SmolLM2's 49k vocabulary, 16 rows of a JSON
schema: llguidance computes the 16 masks in ~0.1 ms per step, outlines-core in ~0.7 ms
(`write_mask_into`; ~9 ms as token lists); outlines-core also builds the whole automaton
up front and its schema regex ignores `minimum`/`maximum`, which llguidance enforces.

Compiling happens on its own thread, before the sequence is admitted to the batch, so a
new or slow schema never stalls the step loop; compiled grammars are cached by their text
and each sequence gets a copy of the compiled matcher.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
from collections import OrderedDict

import llguidance
import torch

from .params import Grammar, InvalidRequest

CACHE_SIZE = 256
# No free whitespace between JSON tokens: a sampling model could otherwise spend its whole
# budget on blank lines. Keywords llguidance does not implement (`format`, ...) constrain
# nothing rather than refuse the schema: the caller validates the answer anyway.
JSON_OPTIONS = {"whitespace_flexible": False, "lenient": True}


class Grammars:
    """The compiled grammars of one tokenizer, and each sequence's matcher."""

    def __init__(self, tokenizer, *, vocab_size: int, eos_ids: set[int], cache_size: int = CACHE_SIZE):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._cache_size = cache_size
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="synthserve-grammar")
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()  # compile thread only

    def matcher(self, grammar: Grammar) -> concurrent.futures.Future[llguidance.LLMatcher]:
        """A fresh matcher of `grammar`, built on the compile thread; fails with
        InvalidRequest when the grammar is not valid."""
        return self._executor.submit(self._matcher, grammar)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _matcher(self, grammar: Grammar) -> llguidance.LLMatcher:
        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = self._compile(grammar)
            self._compiled[grammar] = compiled
            if len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return compiled.deep_copy()

    def _compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        if self._lltokenizer is None:  # ~1 s: the whole vocabulary, once per engine
            self._lltokenizer = _lltokenizer(self._tokenizer, self._vocab_size, self._eos_ids)
        try:
            if grammar.kind == "json":
                text = llguidance.LLMatcher.grammar_from_json_schema(json.loads(grammar.value), defaults=JSON_OPTIONS)
            else:
                text = llguidance.LLMatcher.grammar_from_regex(grammar.value)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"invalid grammar: {exc}") from None
        matcher = llguidance.LLMatcher(self._lltokenizer, text, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"invalid grammar: {matcher.get_error()}")
        return matcher


def _lltokenizer(tokenizer, vocab_size: int, eos_ids: list[int]) -> llguidance.LLTokenizer:
    """llguidance's view of a fast tokenizer. Transformers' GGUF conversion gives byte-level
    BPE vocabularies (SmolLM2's) Llama's decoder (ByteFallback, "▁" replaced) and
    `byte_fallback`, which llguidance reads as SentencePiece: "Ġ" would be the bytes of "Ġ",
    not a space. Such a tokenizer gets the byte-level decoder its pre-tokenizer implies."""
    backend = copy.copy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    spec = json.loads(backend.to_str())
    if '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer")) and spec["model"].get("byte_fallback"):
        spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        spec["model"]["byte_fallback"] = False
    return llguidance.LLTokenizer(json.dumps(spec), n_vocab=vocab_size, eos_token=eos_ids)


class TokenMasks:
    """Applies the matchers of the rows that have one to a step's logits, in place. One
    bitmask buffer for the whole batch (32 tokens per int32), unpacked on the logits' device."""

    def __init__(self, vocab_size: int, max_rows: int):
        self.vocab_size = vocab_size
        self._bits = torch.zeros((max_rows, (vocab_size + 31) // 32), dtype=torch.int32)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def apply(self, logits: torch.Tensor, rows: list[tuple[int, llguidance.LLMatcher]]) -> list[int]:
        """Mask `logits` (batch, vocab) for each `(row, matcher)`; the rows whose matcher
        is in an error state (nothing can follow), left unmasked."""
        failed = []
        row_bytes = self._bits.shape[1] * 4
        for j, (_, matcher) in enumerate(rows):
            matcher.unsafe_compute_mask_ptr(self._bits[j].data_ptr(), row_bytes)
            if matcher.is_error():
                failed.append(j)
        n = len(rows)
        allowed = ((self._bits[:n, :, None] >> self._shifts) & 1).view(n, -1)[:, :logits.shape[-1]].bool()
        if failed:
            allowed[failed] = True
        index = torch.tensor([i for i, _ in rows], device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed.to(logits.device), -float("inf"))
        return [rows[j][0] for j in failed]
