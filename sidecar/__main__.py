"""`python -m sidecar [--model M] [--host H] [--port P] ...`, the same as `synthserve sidecar`."""

from __future__ import annotations

import argparse

from .app import add_arguments, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve(model=args.model, host=args.host, port=args.port, device=args.device,
          max_batch_size=args.max_batch_size, max_concurrent_requests=args.max_concurrent_requests,
          max_batch_total_tokens=args.max_batch_total_tokens)


if __name__ == "__main__":
    main()
