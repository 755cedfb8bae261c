"""A decode step in one C call (decode.c) for a Llama-style model whose linear layers all
have exact block forms (a GGUF's; sidecar.blockq): embedding, 30 layers of RMSNorm,
projections, RoPE, attention over the batch's key/value cache, SiLU MLP and residuals,
then the LM head. Transformers runs a step of SmolLM2 as ~600 dispatched ops; their
Python and dispatch overhead was ~12 ms of a ~26 ms single-sequence step.

`attach` builds the step for a model `sidecar.cpu` has optimized, checks its logits
against the model's own forward on a padded two-row batch, and keeps it on the model;
`step` is what the batcher calls: the fused step for up to MAX_ROWS rows whose cache is
sidecar.kvcache's, the model's forward otherwise.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

import torch

from . import blockq
from .kvcache import SlackLayer, new_cache

log = logging.getLogger(__name__)

ATTRIBUTE = "_synthserve_decode_step"
MAX_ROWS = 32  # the default max batch size; its kernels take any number of rows, eight at a time
DISABLE_ENV = "SYNTHSERVE_FUSED_DECODE"  # "0": per-layer Transformers steps (for A/B measurements)
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")

_p, _i64 = ctypes.c_void_p, ctypes.c_int64


class _Weight(ctypes.Structure):
    _fields_ = [("qs", _p), ("d", _p), ("m", _p), ("kind", _i64), ("n", _i64), ("k", _i64)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", _p), ("mlp_norm", _p), *((name, _Weight) for name in PROJECTIONS)]


class _Model(ctypes.Structure):
    _fields_ = [*((name, _i64) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "vocab",
                                            "positions")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("embed", _p), ("norm", _p), ("cos", _p),
                ("sin", _p), ("head", _Weight), ("layer", ctypes.POINTER(_Layer))]


class FusedStep:
    """The decode step of one model; holds every tensor its C description points into."""

    def __init__(self, model: torch.nn.Module, library: ctypes.CDLL):
        c, inner = model.config, model.model
        layers = inner.layers
        self.library = library
        self.vocab = c.vocab_size
        self.layers = len(layers)
        positions = torch.arange(c.max_position_embeddings)[None]
        with torch.inference_mode():
            cos, sin = inner.rotary_emb(torch.zeros(1), positions)
        cos, sin = cos[0].contiguous(), sin[0].contiguous()
        self._keep: list[Any] = [cos, sin]
        table = (_Layer * self.layers)()
        for entry, layer in zip(table, layers, strict=True):
            entry.attn_norm = self._pointer(layer.input_layernorm.weight)
            entry.mlp_norm = self._pointer(layer.post_attention_layernorm.weight)
            for name in PROJECTIONS:
                owner = layer.self_attn if name in ("q", "k", "v", "o") else layer.mlp
                setattr(entry, name, self._weight(getattr(owner, f"{name}_proj").blocks))
        attention = layers[0].self_attn
        self._model = _Model(
            layers=self.layers, hidden=c.hidden_size, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
            head_dim=attention.head_dim, inter=c.intermediate_size, vocab=c.vocab_size,
            positions=cos.shape[0], eps=_eps(inner.norm), scale=attention.scaling,
            embed=self._pointer(inner.embed_tokens.weight), norm=self._pointer(inner.norm.weight),
            cos=cos.data_ptr(), sin=sin.data_ptr(), head=self._weight(model.lm_head.blocks), layer=table)
        self._keep.append(table)
        self.eps_ok = all(_eps(layer.input_layernorm) == _eps(layer.post_attention_layernorm) == self._model.eps
                          for layer in layers)

    def _pointer(self, t: torch.Tensor) -> int:
        t = t.detach().float().contiguous()
        self._keep.append(t)
        return t.data_ptr()

    def _weight(self, w: blockq.BlockWeight) -> _Weight:
        self._keep.append(w)
        kind = {"q4_1": 0, "q8_0": 1}[w.kind]
        return _Weight(w.qs.data_ptr(), w.d.data_ptr(), None if w.m is None else w.m.data_ptr(), kind,
                       w.out_features, w.in_features)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor,
                 cache: Any) -> torch.Tensor | None:
        """Logits (rows, vocab) of one step, the cache advanced; None (nothing touched) for a
        batch this step does not take."""
        rows = ids.shape[0]
        layers = cache.layers
        if (rows > MAX_ROWS or len(layers) != self.layers or not isinstance(layers[0], SlackLayer)
                or not ids.dtype == mask.dtype == position.dtype == torch.int64):
            return None
        length = layers[0].keys.shape[-2]
        if mask.shape != (rows, length + 1) or len({layer._kbuf.shape[-2] for layer in layers}) != 1:
            return None
        if layers[0]._kbuf.shape[-2] <= length:  # no room left: SlackLayer's own append grows every buffer
            room = layers[0].keys.new_zeros((rows, layers[0].keys.shape[1], 1, layers[0].keys.shape[3]))
            for layer in layers:
                layer.update(room, room)
        else:
            for layer in layers:
                layer.keys, layer.values = layer._kbuf[:, :, :length + 1], layer._vbuf[:, :, :length + 1]
        keys = (_p * self.layers)(*(layer._kbuf.data_ptr() for layer in layers))
        values = (_p * self.layers)(*(layer._vbuf.data_ptr() for layer in layers))
        ids, mask, position = ids.contiguous(), mask.contiguous(), position.contiguous()
        logits = torch.empty((rows, self.vocab))
        failed = self.library.dc_step(ctypes.byref(self._model), rows, ids.data_ptr(), position.data_ptr(), keys,
                                      values, layers[0]._kbuf.shape[-2], length, mask.data_ptr(), logits.data_ptr())
        if failed:
            raise ValueError("a token id or position out of the model's range")
        return logits


def step(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor,
         cache: Any) -> torch.Tensor:
    """Logits (rows, vocab) of one decode step of `ids` (rows, 1) at `position` (rows, 1),
    attending where `mask` (rows, cached + 1) is 1; `cache` advanced by one token."""
    fused = getattr(model, ATTRIBUTE, None)
    logits = fused(ids, mask, position, cache) if fused is not None else None
    if logits is None:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
    return logits


def attach(model: torch.nn.Module) -> bool:
    """Give `model` its fused decode step when it can have one that agrees with its forward."""
    if os.environ.get(DISABLE_ENV) == "0" or not _eligible(model) or not blockq.available():
        return False
    try:
        fused = FusedStep(model, _library())
        if not fused.eps_ok or not _agrees(model, fused):
            log.warning("fused decode step disagrees with the model's forward: not used")
            return False
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a layout this step does not know
        log.warning("no fused decode step: %s", exc)
        return False
    setattr(model, ATTRIBUTE, fused)
    return True


def _eligible(model: torch.nn.Module) -> bool:
    c = model.config
    rope = getattr(c, "rope_scaling", None) or {}
    inner = getattr(model, "model", None)
    if (type(model).__name__ != "LlamaForCausalLM" or c.hidden_act != "silu" or getattr(c, "attention_bias", False)
            or getattr(c, "mlp_bias", False) or getattr(c, "pretraining_tp", 1) != 1
            or rope.get("rope_type", rope.get("type", "default")) != "default" or inner is None
            or getattr(inner.rotary_emb, "attention_scaling", 1.0) != 1.0
            or inner.embed_tokens.weight.dtype != torch.float32):
        return False
    linears = [model.lm_head] + [getattr(layer.self_attn if n in ("q", "k", "v", "o") else layer.mlp, f"{n}_proj")
                                 for layer in inner.layers for n in PROJECTIONS]
    return all(getattr(m, "blocks", None) is not None and getattr(m, "bias", None) is None for m in linears)


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "eps", getattr(norm, "variance_epsilon", float("nan"))))


def probe(model: torch.nn.Module, step: Any, vocab: int,
          device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's own logits for one decode step of a left-padded two-row batch, and those
    `step` (a FusedStep's contract) gives for it (None: it did not take the batch): how a
    replacement step is checked before it is used (here and in sidecar.graphs)."""
    prompt = torch.tensor([[5, 17, 300, 42], [0, 11, 900, 7]], device=device) % vocab
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]], device=device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    following = torch.tensor([[64], [128]], device=device) % vocab
    step_mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
    step_position = position[:, -1:] + 1
    caches = [new_cache(), new_cache()]
    with torch.inference_mode():
        for cache in caches:
            model(input_ids=prompt, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True)
        want = model(input_ids=following, attention_mask=step_mask, position_ids=step_position,
                     past_key_values=caches[0], use_cache=True).logits[:, -1]
        have = step(following, step_mask, step_position, caches[1])
    return want, have


def _agrees(model: torch.nn.Module, fused: FusedStep) -> bool:
    """Whether the probe step gives the model's own logits (to float rounding) and the same argmax."""
    want, have = probe(model, fused, fused.vocab)
    return (have is not None and torch.equal(want.argmax(-1), have.argmax(-1))
            and torch.allclose(want, have, rtol=1e-3, atol=1e-3))


def _library() -> ctypes.CDLL:
    library = blockq.library()
    library.dc_step.argtypes = [_p, _i64, _p, _p, _p, _p, _i64, _i64, _p, _p]
    library.dc_step.restype = ctypes.c_int
    return library
