"""The batch's key/value cache: Transformers' Cache of SlackLayers, which append in place
(sidecar.batcher keeps one per batch; sidecar.decode's fused step writes into its buffers)."""

from __future__ import annotations

import math
import mmap

import torch
from transformers.cache_utils import Cache, DynamicLayer


class SlackLayer(DynamicLayer):
    """A DynamicLayer that appends in place and keeps its keys and values out of the heap.

    `keys`/`values` are views of a buffer with room for SLACK more tokens; DynamicLayer
    concatenates on every step, which copies the whole cache per token. Each buffer is its
    own anonymous memory mapping (on CPU), unmapped as soon as it is dropped: a batch's
    cache is long-lived and resized as rows come and go, and inside malloc's heap it left
    holes that kept RSS ~200 MiB above the live tensors at 32 requests. Activations stay
    on the heap, where reuse is fast (a global mmap threshold instead slowed embedding
    batches by a third with page faults). Whatever replaces `keys` goes through
    `replace`, which copies it into a fresh buffer and lets the old one go at once."""

    SLACK = 16

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        length = keys.shape[-2]
        self._kbuf, self._vbuf = (_with_room(t, length + self.SLACK) for t in (keys, values))
        self.keys, self.values = self._kbuf[:, :, :length], self._vbuf[:, :, :length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.replace(self.keys[indices], self.values[indices])

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
            self.replace(key_states, value_states)
            return self.keys, self.values
        length, n = self.keys.shape[-2], key_states.shape[-2]
        if length + n > self._kbuf.shape[-2]:
            self._kbuf, self._vbuf = (_with_room(t, length + n + self.SLACK) for t in (self.keys, self.values))
        self._kbuf[:, :, length:length + n] = key_states
        self._vbuf[:, :, length:length + n] = value_states
        self.keys, self.values = self._kbuf[:, :, :length + n], self._vbuf[:, :, :length + n]
        return self.keys, self.values


def _with_room(t: torch.Tensor, capacity: int) -> torch.Tensor:
    """`t` (batch, heads, tokens, dim) copied into a new buffer of `capacity` tokens."""
    shape = (t.shape[0], t.shape[1], capacity, t.shape[3])
    if t.device.type == "cpu":
        count = math.prod(shape)
        # frombuffer holds the mapping; it is unmapped when the last view of it goes
        buf = torch.frombuffer(mmap.mmap(-1, max(count, 1) * t.element_size()), dtype=t.dtype,
                               count=count).view(shape)
    else:
        buf = t.new_empty(shape)
    buf[:, :, :t.shape[2]] = t
    return buf


def new_cache() -> Cache:
    return Cache(layer_class_to_replicate=SlackLayer)
