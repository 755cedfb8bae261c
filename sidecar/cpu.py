"""Faster float32 inference on the CPU, for a loaded Transformers model: attention that
does not copy grouped keys and values, linear layers on oneDNN with prepacked weights,
and one fused kernel per RMSNorm. Each swap is checked against what it replaces.

Why oneDNN: PyTorch's CPU `linear` calls MKL's sgemm, which on AMD processors (this
project's machines are AMD EPYC) runs its AVX2 code and ignores AVX-512. oneDNN picks its
kernels from the instruction set whatever the vendor, and with the weight reordered once
into its blocked layout it reaches, measured here on 2 cores: 2.9x MKL for a 16-row decode
step's MLP, 2.4x for a prefill; 2.1x for an LM head left unpacked. It is the op
`torch.compile` uses for CPU linears once weights are frozen; results match `F.linear` to
float32 rounding.

Calls of a few rows (decode steps) go to sidecar.blockq's kernels instead where a weight
is exactly block-quantized (a GGUF's): the same numbers in a seventh of the bytes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from . import blockq, decode

log = logging.getLogger(__name__)

ATTENTION = "synthserve_cpu_sdpa"
# The batch size the weight layout is tuned for; measured here it serves 1 to 2,048 rows
# as well as a layout tuned for each (16 and up were all within 3%).
PACK_ROWS = 32
MADV_DONTNEED = 4


def optimize(model: torch.nn.Module, folder: str | Path | None = None) -> None:
    """Apply every swap that this torch build and `model` (loaded from `folder`) allow, in place."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(_register_attention())
    fused = fuse_rms_norms(model)
    blocks = blockq.exact_forms(model, folder) if blockq.available() else {}
    linears = use_onednn(model, packed=_page_dropper(), blocks=blocks)
    quantized = sum(1 for m in model.modules() if isinstance(m, OneDNNLinear) and m.blocks is not None)
    stepped = decode.attach(model)
    log.info("CPU inference: %d linears on oneDNN (%d with exact block-quantized weights for decode steps), "
             "%d fused RMSNorms; fused decode steps: %s", linears, quantized, fused, "yes" if stepped else "no")


# ---- attention ----

def _register_attention() -> str:
    """Transformers' sdpa repeats grouped keys and values for every query head whenever
    there is a mask (which a left-padded batch always has): 3x the cache copied per layer
    and step for SmolLM2. On CPU, SDPA's own `enable_gqa` takes a mask and is ~3x faster
    for a decode step's attention, with the same result."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        if attention_mask is not None and attention_mask.ndim == 4:
            attention_mask = attention_mask[:, :, :, :key.shape[-2]]
        if is_causal is None:
            is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
            enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


# ---- linear layers ----

class OneDNNLinear(torch.nn.Module):
    """`nn.Linear` for inference through oneDNN, its weight reordered into oneDNN's
    layout (the dense one is dropped) unless `pack` is false. A weight tied to the input
    embeddings (SmolLM2's LM head) stays dense and shared: packing it would hold a second
    copy, 113 MiB for SmolLM2, for ~3 ms of a 16-row decode step."""

    def __init__(self, linear: torch.nn.Linear, *, pack: bool = True, blocks: blockq.BlockWeight | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.blocks = blocks  # the same weight in exact block form, for calls of a few rows
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS) if pack else weight
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None and x.numel() <= blockq.MAX_ROWS * self.in_features:
            y = self.blocks.matmul(x.reshape(-1, self.in_features).contiguous())
            if self.bias is not None:
                y += self.bias
            return y.view(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, packed={self.weight.is_mkldnn}, "
                f"blocks={self.blocks.kind if self.blocks is not None else None}")


def use_onednn(model: torch.nn.Module, packed: Callable[[torch.Tensor], None] | None = None, *,
               blocks: dict[int, blockq.BlockWeight] | None = None) -> int:
    """Swap every float32 `nn.Linear` for a OneDNNLinear; the number swapped (0 when
    oneDNN cannot serve). `packed` is given each dense weight no longer used once its
    packed copy exists; `blocks` (blockq.exact_forms) gives weights their block form too."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32]
    if not targets or not _agrees(targets[0][2], OneDNNLinear, targets[0][2].in_features):
        return 0
    tied = {p.data_ptr() for m in model.modules() if not isinstance(m, torch.nn.Linear)
            for p in m.parameters(recurse=False)}
    for parent, name, child in targets:
        pack = child.weight.data_ptr() not in tied
        setattr(parent, name, OneDNNLinear(child, pack=pack, blocks=(blocks or {}).get(child.weight.data_ptr())))
        if pack and packed is not None:
            packed(child.weight)
    return len(targets)


def _page_dropper() -> Callable[[torch.Tensor], None] | None:
    """Transformers maps safetensors files into memory, so packing the linears reads
    every page of the file into the process: ~430 MiB of file pages on top of the packed
    copies for as long as any tensor points into the mapping (the input embeddings do).
    This drops a packed weight's pages at once; they stay in the page cache. Only for
    mappings no page of which was written to: those the file holds."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        clean = _clean_file_mappings()
    except (OSError, AttributeError, ValueError) as exc:  # a memory figure, not a correctness matter
        log.debug("cannot drop mapped model pages: %s", exc)
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def drop(t: torch.Tensor) -> None:
        start = -(-t.data_ptr() // page) * page  # whole pages inside the tensor
        end = (t.data_ptr() + t.nbytes) // page * page
        if end > start and any(a <= start and end <= b for a, b in clean):
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)

    return drop


def _clean_file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's file mappings that hold no private or dirty page."""
    found, current, clean = [], None, True
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            if current and clean:
                found.append(current)
            start, end = (int(x, 16) for x in head[0].split("-"))
            current, clean = ((start, end) if len(head) >= 6 and head[5].startswith("/") else None), True
        elif head[0] in ("Private_Dirty:", "Shared_Dirty:", "Anonymous:") and head[1] != "0":
            clean = False
    if current and clean:
        found.append(current)
    return found


# ---- RMSNorm ----

class FusedRMSNorm(torch.nn.Module):
    """`F.rms_norm`: one kernel where Llama-style RMSNorms run six (pow, mean, add,
    rsqrt, two muls), 12x faster on a 64-text embedding batch, with the same result."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.weight = norm.weight
        self.eps = float(norm.variance_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Swap each Llama-style RMSNorm (a `weight` and a `variance_epsilon`; checked per
    class against its own forward) for a FusedRMSNorm; the number swapped."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child).__name__.endswith("RMSNorm") and hasattr(child, "variance_epsilon")
               and isinstance(getattr(child, "weight", None), torch.nn.Parameter) and child.weight.dim() == 1]
    verdict: dict[type, bool] = {}
    count = 0
    for parent, name, child in targets:
        kind = type(child)
        if kind not in verdict:
            verdict[kind] = _agrees(child, FusedRMSNorm, child.weight.shape[0])
        if verdict[kind]:
            setattr(parent, name, FusedRMSNorm(child))
            count += 1
    return count


def _agrees(module: torch.nn.Module, swap: Callable[[torch.nn.Module], torch.nn.Module], width: int) -> bool:
    """Whether `swap(module)` computes what `module` does on a random input."""
    try:
        with torch.inference_mode():
            x = torch.randn(3, 5, width, dtype=torch.float32)
            want, got = module(x), swap(module)(x)
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-3, atol=1e-3)
    except Exception as exc:  # an op missing or changed in this torch build: keep the original
        log.warning("keeping %s: its CPU replacement failed: %s", type(module).__name__, exc)
        return False
