"""Block-quantized weights for decode steps, where they are exact: a model converted from a
GGUF holds weights that are de-quantized blocks (SmolLM2's file: Q4_1 linears, a Q8_0
embedding that is also its LM head), so the same numbers fit in 5 or 8.5 bits per weight
instead of 32. A decode step reads every weight once and is bound by memory bandwidth, so
reading about 1/6 (Q4_1) or 1/4 (Q8_0) of the bytes is what makes one sequence fast.

A weight is taken in block form only when rebuilding every block gives back exactly the
float32 weight the model holds (checked element by element); results then differ from a
float32 matmul only in the order of the sums. The kernels (blockq.c) are C, compiled once
per machine with the system's compiler into the cache folder and loaded with ctypes, so
nothing is built at install time; without a compiler the model keeps its float32 path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .cache import cache_dir

log = logging.getLogger(__name__)

BLOCK = 32
MAX_ROWS = 8  # rows (sequences) per call the kernels take; more go to oneDNN's float32 path
# Weights (elements) from which a call is split between threads: the MLP's and the LM head, not
# the attention projections, whose calls are too short to pay for waking a second thread
# (measured: 1 sequence 21.5 -> 26.2 tok/s against splitting every call, at load average 11)
PARALLEL_MIN = 1 << 19
# the kernels, and the fused decode step (sidecar.decode) that includes them: one library
SOURCES = tuple(Path(__file__).with_name(name) for name in ("blockq.c", "decode.c"))
FORMS_VERSION = "2"  # of the cached block forms: 2 holds scales and offsets as float16
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


@dataclass(frozen=True, slots=True)
class BlockWeight:
    """A weight (out_features, in_features) as blocks of 32 along in_features."""

    kind: str  # "q4_1" or "q8_0"
    qs: torch.Tensor  # uint8: two 4-bit values per byte (q4_1), or int8 values (q8_0)
    d: torch.Tensor  # float16 (out, blocks): each block's scale (exact: a GGUF stores it so)
    m: torch.Tensor | None  # float16 (out, blocks): each block's offset (q4_1)
    out_features: int
    in_features: int

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in_features), float32, contiguous, rows <= MAX_ROWS -> (rows, out_features)."""
        y = x.new_empty((x.shape[0], self.out_features))
        getattr(library(), f"{self.kind}_mm")(
            x.data_ptr(), x.shape[0], self.in_features, self.qs.data_ptr(), self.d.data_ptr(),
            None if self.m is None else self.m.data_ptr(), self.out_features, y.data_ptr(), PARALLEL_MIN)
        return y


def available() -> bool:
    """Whether the kernels are built (building them on first call)."""
    try:
        library()
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("block-quantized kernels unavailable (float32 weights only): %s", exc)
        return False


def exact_forms(model: torch.nn.Module, folder: str | Path | None = None) -> dict[int, BlockWeight]:
    """The exact block forms of `model`'s float32 linear weights, by the weight's
    `data_ptr()`. Checking takes seconds, so with the `folder` the model was loaded from the
    answer is cached (by its weight files' names, sizes and times): a warm start reads it.
    A model whose first linear weight has no exact form is taken to have none."""
    linears = {name: m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32}
    path = _cache_path(Path(folder)) if folder is not None and Path(folder).is_dir() else None
    if path is not None and path.is_file():
        forms = _read(path)
    else:
        forms = {}
        for name, weight in linears.items():
            form = exact_form(weight)
            if form is None and not forms:
                break
            if form is not None:
                forms[name] = form
        if path is not None:
            _write(path, forms)
    return {linears[name].data_ptr(): form for name, form in forms.items() if name in linears}


def _cache_path(folder: Path) -> Path:

    files = sorted(f for f in folder.iterdir() if f.suffix == ".safetensors")
    key = "\0".join([FORMS_VERSION, str(folder.resolve()), *(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                             for f in files)])
    return cache_dir() / "blocks" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def _write(path: Path, forms: dict[str, BlockWeight]) -> None:
    from safetensors.torch import save_file

    tensors = {f"{name}.{part}": t for name, f in forms.items()
               for part, t in (("qs", f.qs), ("d", f.d), ("m", f.m)) if t is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_file(tensors, str(tmp), metadata={name: f.kind for name, f in forms.items()})
    os.replace(tmp, path)  # atomic: another process starting meanwhile reads all of it or none


def _read(path: Path) -> dict[str, BlockWeight]:
    from safetensors import safe_open

    forms = {}
    with safe_open(path, "pt") as f:
        for name, kind in (f.metadata() or {}).items():
            qs, d = f.get_tensor(f"{name}.qs"), f.get_tensor(f"{name}.d")
            m = f.get_tensor(f"{name}.m") if kind == "q4_1" else None
            per_byte = 2 if kind == "q4_1" else 1
            forms[name] = BlockWeight(kind, qs, d, m, qs.shape[0], qs.shape[1] * qs.shape[2] * per_byte)
    return forms


def exact_form(weight: torch.Tensor) -> BlockWeight | None:
    """`weight` in the first block format that rebuilds it exactly, else None."""
    if weight.dtype != torch.float32 or weight.dim() != 2 or weight.shape[1] % BLOCK:
        return None
    with torch.inference_mode():
        blocks = weight.detach().reshape(weight.shape[0], -1, BLOCK)
        return _q4_1(blocks) or _q8_0(blocks)


def _q4_1(blocks: torch.Tensor) -> BlockWeight | None:
    # ggml's Q4_1: d = (max - min) / 15 and m = min, both stored as float16, w = q * d + m
    low = blocks.amin(-1, keepdim=True)
    d = ((blocks.amax(-1, keepdim=True) - low) / 15).half().float()
    q = ((blocks - low) / torch.where(d == 0, 1.0, d)).round_().clamp_(0, 15)
    if not torch.equal(q * d + low, blocks) or not torch.equal(low.half().float(), low):
        return None
    q = q.to(torch.uint8)
    packed = (q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)).contiguous()
    n, k = blocks.shape[0], blocks.shape[1] * BLOCK
    return BlockWeight("q4_1", packed, d[..., 0].half().contiguous(), low[..., 0].half().contiguous(), n, k)


def _q8_0(blocks: torch.Tensor) -> BlockWeight | None:
    # ggml's Q8_0: d = absmax / 127, stored as float16, w = q * d
    d = (blocks.abs().amax(-1, keepdim=True) / 127).half().float()
    q = (blocks / torch.where(d == 0, 1.0, d)).round_().clamp_(-127, 127)
    if not torch.equal(q * d, blocks):
        return None
    n, k = blocks.shape[0], blocks.shape[1] * BLOCK
    return BlockWeight("q8_0", q.to(torch.int8).contiguous(), d[..., 0].half().contiguous(), None, n, k)


@cache
def library() -> ctypes.CDLL:
    """The kernels built for this machine (once: the build is cached by sources, flags and CPU)."""

    key = hashlib.sha256(b"\0".join([*(source.read_bytes() for source in SOURCES), " ".join(FLAGS).encode(),
                                     platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"blockq-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler = os.environ.get("CC", "cc")
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            built = Path(tmp) / path.name
            subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCES[-1])],
                           check=True, capture_output=True, timeout=120)
            os.replace(built, path)  # atomic: a process starting meanwhile sees all of it or nothing
    lib = ctypes.CDLL(str(path))
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("q4_1_mm", "q8_0_mm"):
        fn = getattr(lib, name)
        fn.argtypes = [pointer, i64, i64, pointer, pointer, pointer, i64, pointer, i64]
        fn.restype = None
    return lib


def _cpu_flags() -> str:
    if sys.platform != "linux":
        return ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return line
    return ""
