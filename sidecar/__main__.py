"""`python -m sidecar [--model M] [--host H] [--port P] ...`, the same as `synthserve sidecar`."""

from __future__ import annotations

import argparse

from .app import serve
from .options import add_arguments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar", description=__doc__)
    add_arguments(parser)
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
