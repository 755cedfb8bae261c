"""The options of `synthserve sidecar` and `python -m sidecar`, apart from the server: the
CLI builds its parser on every start (`synthserve run` included), and importing the
sidecar's FastAPI app for that cost half a second."""

from __future__ import annotations

import argparse

from .params import MAX_BATCH_SIZE, MAX_CONCURRENT_REQUESTS

DEFAULT_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `synthserve sidecar` and `python -m sidecar`; the batch limits have
    the names of TGI's launcher."""
    parser.add_argument("--model", help="local folder, .gguf file or cached Hugging Face id "
                                        "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--max-batch-size", type=_positive, default=MAX_BATCH_SIZE, metavar="N",
                        help=f"sequences generated together (default {MAX_BATCH_SIZE}); fewer hold less "
                             "key/value cache")
    parser.add_argument("--max-concurrent-requests", type=_positive, default=MAX_CONCURRENT_REQUESTS, metavar="N",
                        help=f"requests queued or running before new ones get 429 (default {MAX_CONCURRENT_REQUESTS})")
    parser.add_argument("--max-batch-total-tokens", type=_positive, metavar="N",
                        help="prompt + max_new_tokens summed over the batch, and the most one request "
                             "may ask for (default: 2 GiB of key/value cache, at least the model's context)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
