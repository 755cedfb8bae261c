"""The decode step for CUDA: the Llama layer stack written as plain torch ops over static
key/value pools, captured once per batch bucket and capacity bucket into a CUDA graph and
replayed. A step of SmolLM2 is ~600 small kernels; launched one by one from Python, the
GPU waits on the launches, while a replay launches them all at once.

Everything a graph reads or writes lives at a fixed address: a pool per capacity bucket
(multiples of BUCKET tokens) holds every layer's keys and values for MAX_BATCH rows, the
step's ids, positions, mask, write column and logits; a batch of B rows runs on the pool's
first Bb rows (the batch bucket). The batch's cache (SlackLayers) is copied into a pool
once and its buffers become views of it, so later steps copy nothing; nothing in the step
depends on a value read back from the device. With capture=False the same function runs
eagerly: that is how it is tested on CPU.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import decode
from .kvcache import SlackLayer

log = logging.getLogger(__name__)

BUCKET = 256  # capacity buckets are multiples of this many tokens
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
MAX_BATCH = BATCH_BUCKETS[-1]
POOL_BYTES = 4 << 30  # all pools together: the least recently used go first, never the one in use
DISABLE_ENV = "SYNTHSERVE_CUDA_GRAPHS"  # "0": Transformers' own steps (for A/B measurements)
WARMUP = 3  # eager runs on a side stream before a capture, as PyTorch's docs do


class _Pool:
    """The static tensors of one capacity bucket, and the graphs captured over them by batch bucket."""

    def __init__(self, step: GraphedStep, capacity: int):
        device = step.embed.device
        shape = (MAX_BATCH, step.kv_heads, capacity, step.head_dim)
        self.capacity = capacity
        self.keys = [torch.zeros(shape, dtype=step.embed.dtype, device=device) for _ in step.layers]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.ids = torch.zeros((MAX_BATCH, 1), dtype=torch.long, device=device)
        self.position = torch.zeros_like(self.ids)
        self.mask = torch.zeros((MAX_BATCH, capacity), dtype=torch.bool, device=device)
        self.write = torch.zeros(1, dtype=torch.long, device=device)
        self.logits = torch.zeros((MAX_BATCH, step.vocab), device=device)
        self.graphs: dict[int, Any] = {}
        self.owner: Callable[[], Any] = lambda: None  # the cache whose layers are views of this pool


class GraphedStep:
    """The static decode step of one model: the same contract as decode.FusedStep."""

    def __init__(self, model: torch.nn.Module, *, capture: bool, bucket: int = BUCKET, pool_bytes: int = POOL_BYTES):
        c, inner = model.config, model.model
        attention = inner.layers[0].self_attn
        self.capture, self.bucket, self.pool_bytes = capture, bucket, pool_bytes
        self.vocab, self.positions = c.vocab_size, c.max_position_embeddings
        self.kv_heads, self.head_dim = c.num_key_value_heads, attention.head_dim
        self.groups, self.scale = c.num_attention_heads // c.num_key_value_heads, attention.scaling
        self.embed, self.head = inner.embed_tokens.weight, model.lm_head.weight
        self.norm = _norm(inner.norm)
        self.layers = [(_norm(layer.input_layernorm), _norm(layer.post_attention_layernorm),
                        *(getattr(layer.self_attn if n in ("q", "k", "v", "o") else layer.mlp, f"{n}_proj").weight
                          for n in decode.PROJECTIONS)) for layer in inner.layers]
        # the rotary table for every position once, in the model's dtype as Transformers casts it
        positions = torch.arange(self.positions, device=self.embed.device)[None]
        with torch.inference_mode():
            cos, sin = inner.rotary_emb(self.embed[:1], positions)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()
        self.pools: OrderedDict[int, _Pool] = OrderedDict()
        self.memory: Any = None  # the graphs' shared memory pool, made at the first capture
        self.steps = 0  # steps served

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor,
                 cache: Any) -> torch.Tensor | None:
        """Logits (rows, vocab) of one step, the cache advanced; None (nothing touched) for a
        batch this step does not take."""
        rows, layers = ids.shape[0], cache.layers
        if rows > MAX_BATCH or len(layers) != len(self.layers) or not isinstance(layers[0], SlackLayer):
            return None
        length = layers[0].keys.shape[-2]
        if length + 1 > self.positions or mask.shape != (rows, length + 1):
            return None
        pool = self._pool(min(-(-(length + 1) // self.bucket) * self.bucket, self.positions))
        if (pool.owner() is not cache or layers[0]._kbuf.data_ptr() != pool.keys[0].data_ptr()
                or layers[0]._kbuf.shape[0] != rows):
            self._take(pool, cache, rows, length)
        batch = next(b for b in BATCH_BUCKETS if b >= rows)
        pool.ids[:rows].copy_(ids)
        pool.position[:rows].copy_(position)
        pool.mask[:batch].zero_()
        pool.mask[:rows, :length + 1].copy_(mask)
        pool.mask[rows:batch, 0] = True  # the bucket's idle rows attend to something: no NaN
        pool.write.fill_(length)
        if self.capture:
            self._replay(pool, batch)
        else:
            self._forward(pool, batch)
        for layer in layers:
            layer.keys, layer.values = layer._kbuf[:, :, :length + 1], layer._vbuf[:, :, :length + 1]
        self.steps += 1
        return pool.logits[:rows].clone()  # the next step overwrites the pool's

    def _pool(self, capacity: int) -> _Pool:
        pool = self.pools.pop(capacity, None)
        if pool is None:
            column = 2 * len(self.layers) * MAX_BATCH * self.kv_heads * self.head_dim * self.embed.element_size()
            while self.pools and column * (sum(self.pools) + capacity) > self.pool_bytes:  # keys are capacities
                self.pools.popitem(last=False)  # its graphs go with it; caches viewing it keep its memory
            pool = _Pool(self, capacity)
        self.pools[capacity] = pool  # the most recently used last
        return pool

    def _take(self, pool: _Pool, cache: Any, rows: int, length: int) -> None:
        """Copy `cache` into `pool` and make its buffers views of it."""
        previous = pool.owner()
        if previous is not None and previous is not cache:
            for i, layer in enumerate(previous.layers):  # give the pool's last user copies of its own
                if layer._kbuf.data_ptr() == pool.keys[i].data_ptr():
                    layer.replace(layer.keys, layer.values)
        for layer, keys, values in zip(cache.layers, pool.keys, pool.values, strict=True):
            keys[:rows, :, :length].copy_(layer.keys)
            values[:rows, :, :length].copy_(layer.values)
            layer._kbuf, layer._vbuf = keys[:rows], values[:rows]
        pool.owner = weakref.ref(cache)

    def _replay(self, pool: _Pool, batch: int) -> None:
        graph = pool.graphs.get(batch)
        if graph is None:
            log.info("capturing the decode step for %d rows, %d tokens", batch, pool.capacity)
            # warm-up first, on a side stream (lazy initializations must not happen in a capture);
            # each run writes the same key/value column, so running the step again is harmless
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP):
                    self._forward(pool, batch)
            torch.cuda.current_stream().wait_stream(side)
            if self.memory is None:
                self.memory = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (the server's) do not break the capture
            with torch.cuda.graph(graph, pool=self.memory, capture_error_mode="thread_local"):
                self._forward(pool, batch)
            pool.graphs[batch] = graph
        graph.replay()

    def _forward(self, pool: _Pool, rows: int) -> None:
        """One step of the pool's first `rows` rows: plain torch ops, no host reads, no shapes
        that depend on data, so capturable as is."""
        h = F.embedding(pool.ids[:rows], self.embed)  # (rows, 1, hidden)
        cos = F.embedding(pool.position[:rows], self.cos)[:, None]  # (rows, 1, 1, head_dim)
        sin = F.embedding(pool.position[:rows], self.sin)[:, None]
        mask = pool.mask[:rows, None, None, :]
        for (norm1, norm2, q, k, v, o, gate, up, down), keys, values in zip(self.layers, pool.keys, pool.values,
                                                                            strict=True):
            x = _rms(h, *norm1)
            # GQA as one query "token" per head of a group: (rows, kv_heads, groups, head_dim)
            # attends to its kv head's cache without repeating it, with any SDPA kernel
            query = _rope(F.linear(x, q).view(rows, self.kv_heads, self.groups, self.head_dim), cos, sin)
            key = _rope(F.linear(x, k).view(rows, self.kv_heads, 1, self.head_dim), cos, sin)
            keys, values = keys[:rows], values[:rows]
            keys.index_copy_(2, pool.write, key)
            values.index_copy_(2, pool.write, F.linear(x, v).view(rows, self.kv_heads, 1, self.head_dim))
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self.scale)
            h = h + F.linear(out.reshape(rows, 1, -1), o)
            x = _rms(h, *norm2)
            h = h + F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
        pool.logits[:rows].copy_(F.linear(_rms(h, *self.norm)[:, 0], self.head))


def _norm(module: torch.nn.Module) -> tuple[torch.Tensor, float]:
    return module.weight, decode._eps(module)


def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic exactly: in float32, cast back before the weight."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def attach(model: torch.nn.Module, capture: bool, **options: Any) -> bool:
    """Give `model` the static decode step (captured in CUDA graphs when `capture`) when it
    can have one that agrees with its forward; whether it did."""
    if os.environ.get(DISABLE_ENV) == "0" or not _eligible(model):
        return False
    try:
        step = GraphedStep(model, capture=capture, **options)
        agrees = _agrees(model, step)
        step.pools.clear()  # the check's; the batch's are made as it needs them
        step.steps = 0
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:  # a layout or device it cannot do
        log.warning("no static decode step: %s", exc)
        return False
    if not agrees:
        log.warning("static decode step disagrees with the model's forward: not used")
        return False
    setattr(model, decode.ATTRIBUTE, step)
    return True


def _eligible(model: torch.nn.Module) -> bool:
    c, inner = model.config, getattr(model, "model", None)
    rope = getattr(c, "rope_scaling", None) or {}
    if (type(model).__name__ != "LlamaForCausalLM" or inner is None or c.hidden_act != "silu"
            or getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False)
            or getattr(c, "pretraining_tp", 1) != 1 or rope.get("rope_type", rope.get("type", "default")) != "default"
            or getattr(inner.rotary_emb, "attention_scaling", 1.0) != 1.0):
        return False
    linears = [model.lm_head] + [getattr(layer.self_attn if n in ("q", "k", "v", "o") else layer.mlp, f"{n}_proj")
                                 for layer in inner.layers for n in decode.PROJECTIONS]
    return all(type(m) is torch.nn.Linear and m.bias is None for m in linears)


def _agrees(model: torch.nn.Module, step: GraphedStep) -> bool:
    """Whether a step of a left-padded two-row batch gives the model's own logits, to the
    rounding of its dtype, and a token the model's logits put within that rounding of their max."""
    want, have = decode.probe(model, step, step.vocab, step.embed.device)
    if have is None:
        return False
    want = want.float()
    # bf16: measured on CPU, this step's and Transformers' own are each up to ~0.8 off float32
    # logits (magnitude ~30), mean ~0.15; a wrong step is off by whole units throughout
    rtol, atol = (1e-3, 1e-3) if step.embed.dtype == torch.float32 else (0.05, 1.0)
    chosen = want.gather(1, have.argmax(-1, keepdim=True))[:, 0]
    return bool(torch.allclose(want, have, rtol=rtol, atol=atol) and (chosen >= want.max(-1).values - atol).all())
