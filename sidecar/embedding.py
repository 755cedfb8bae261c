"""Embeddings: the base model's (no LM head) final hidden state at the last token of each
tokenized input, batched across calls.

Texts from every caller wait in one queue; a drain job on the model thread (a Batcher
side job, so decode steps run between two drains) takes the oldest texts that fit one
batch, sorted by length, and runs them. generate-embeddings sends one text per row, so
batching concurrent calls is what makes it fast.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from .batcher import Batcher, settle


@dataclass(slots=True)
class _Item:
    ids: list[int]
    normalize: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Embedder:
    def __init__(self, model, batcher: Batcher, *, batch_size: int = 64, batch_tokens: int = 8192):
        self.model = model
        self.batcher = batcher
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self._pending: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._draining = False

    def submit(self, ids: list[list[int]], *, normalize: bool = False) -> list[concurrent.futures.Future]:
        """Queue token-id lists (thread-safe); one future of a vector (list of floats) each."""
        items = [_Item(x, normalize) for x in ids]
        with self._lock:
            # longest first within one call: its batches come out of the queue length-sorted
            self._pending.extend(sorted(items, key=lambda item: -len(item.ids)))
            schedule = not self._draining
            self._draining = True
        if schedule:
            self.batcher.call(self._drain)
        return [item.future for item in items]

    def _drain(self) -> None:
        """On the model thread: one batch, then a new drain job if texts are left."""
        batch: list[_Item] = []
        longest = 0
        with self._lock:
            while self._pending and len(batch) < self.batch_size:
                item = self._pending[0]
                if item.future.cancelled():
                    self._pending.popleft()
                    continue
                if batch and max(longest, len(item.ids)) * (len(batch) + 1) > self.batch_tokens:
                    break
                batch.append(self._pending.popleft())
                longest = max(longest, len(item.ids))
            self._draining = bool(self._pending)
        if self._draining:
            self.batcher.call(self._drain)
        if not batch:
            return
        try:
            vectors = self.forward([item.ids for item in batch])
        except Exception as exc:  # handed to each waiting caller
            for item in batch:
                settle(item.future, exc)
            return
        for item, vector in zip(batch, vectors, strict=True):
            if item.normalize:
                vector = F.normalize(vector, dim=-1)
            settle(item.future, vector.tolist())

    def forward(self, ids: list[list[int]]) -> torch.Tensor:
        """Last-token final hidden states (float32, on CPU) of one batch. The prefix every
        text shares (the chat template's system prompt and user header: most of a short
        text's tokens) runs once and every row attends to its cache; the rest runs
        right-padded after it."""
        n, device = len(ids), self.model.device
        shared = _common_prefix(ids) if n > 1 else 0
        cache = None
        if shared:
            cache = Cache(layer_class_to_replicate=_SharedPrefix)
            self.model.base_model(input_ids=torch.tensor([ids[0][:shared]], device=device),
                                  past_key_values=cache, use_cache=True)
        rest = [x[shared:] for x in ids]
        longest = max(map(len, rest))
        input_ids = torch.tensor([x + [self.batcher.pad_id] * (longest - len(x)) for x in rest], device=device)
        lengths = torch.tensor([len(x) for x in rest], device=device)
        mask = (torch.arange(longest, device=device)[None, :] < lengths[:, None]).long()
        mask = torch.cat([mask.new_ones((n, shared)), mask], dim=1)
        position = (shared + torch.arange(longest, device=device))[None, :].expand(n, -1)
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=position,
                                       past_key_values=cache, use_cache=cache is not None).last_hidden_state
        return hidden[torch.arange(n, device=device), lengths - 1].float().cpu()


class _SharedPrefix(DynamicLayer):
    """A cache layer holding one copy of the shared prefix: the batch sees it broadcast
    (`expand`, no copy), and the batch's own keys and values are used, not kept. Repeating
    the prefix for 64 texts cost ~80 MiB of peak memory."""

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:  # the prefix pass
            return super().update(key_states, value_states, cache_kwargs)
        batch = key_states.shape[0]
        return (torch.cat([self.keys.expand(batch, -1, -1, -1), key_states], dim=-2),
                torch.cat([self.values.expand(batch, -1, -1, -1), value_states], dim=-2))


def _common_prefix(ids: list[list[int]]) -> int:
    """Length of the token prefix all of `ids` share, leaving each at least one token."""
    first, limit = ids[0], min(map(len, ids)) - 1
    n = 0
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return n
