"""`python -m sidecar [--model M] [--host H] [--port P]`, the same as `synthserve sidecar`."""

from __future__ import annotations

import argparse

from .app import DEFAULT_PORT, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar", description=__doc__)
    parser.add_argument("--model", help="local folder, .gguf file or cached Hugging Face id "
                                        "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    args = parser.parse_args(argv)
    serve(model=args.model, host=args.host, port=args.port, device=args.device)


if __name__ == "__main__":
    main()
