"""`synthserve serve | worker | sidecar`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synthserve", description="Synthetic data generation service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--config", help="TOML config (default: $SYNTHSERVE_CONFIG, else built-in defaults)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")

    worker = sub.add_parser("worker", help="run a job worker (needs [jobs] redis_url)")
    worker.add_argument("--config")

    sidecar = sub.add_parser("sidecar", help="run the local-model server (TGI protocol)")
    sidecar.add_argument("--model", help="local path or cached model id (default: embedded SmolLM2-135M-Instruct)")
    sidecar.add_argument("--host", default="127.0.0.1")
    sidecar.add_argument("--port", type=int, default=8080)

    args = parser.parse_args(argv)
    from .config import ConfigError, load_settings

    if args.command == "sidecar":
        from sidecar.app import serve as serve_sidecar
        serve_sidecar(model=args.model, host=args.host, port=args.port)
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"synthserve: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        import uvicorn

        from .main import create_app
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
        return 0
    if args.command == "worker":
        from .jobs.worker import run_worker
        return run_worker(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
