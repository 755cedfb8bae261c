"""`synthserve serve | worker | sidecar`."""

from __future__ import annotations

import argparse
import sys

from sidecar.options import add_arguments as add_sidecar_arguments

from .client.commands import add_commands as add_client_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthserve", description="Synthetic data generation service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--config", help="TOML config (default: $SYNTHSERVE_CONFIG, else built-in defaults)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", choices=["json", "text"], help="default: $SYNTHSERVE_LOG_FORMAT, else json")
    serve.add_argument("--graceful-timeout", type=float, default=25.0, metavar="S",
                       help="on SIGTERM, seconds to let requests in flight finish before cancelling them")

    worker = sub.add_parser("worker", help="run a job worker (needs [jobs] redis_url)")
    worker.add_argument("--config")
    worker.add_argument("--log-level", default="info")
    worker.add_argument("--log-format", choices=["json", "text"])

    sidecar = sub.add_parser("sidecar", help="run the local-model server (TGI protocol)")
    add_sidecar_arguments(sidecar)
    sidecar.add_argument("--log-level", default="info")
    sidecar.add_argument("--log-format", choices=["json", "text"])
    add_client_commands(sub)  # run, jobs
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "client"):  # the client commands set up their own output
        return args.client(args)
    from .config import ConfigError, load_settings
    from .logging import configure_logging

    configure_logging(args.log_level, args.log_format)

    if args.command == "sidecar":
        from sidecar.app import serve as serve_sidecar
        serve_sidecar(args, log_level=args.log_level)
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"synthserve: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from .jobs.private import PrivateRedisError, redis_server
        from .main import create_app
        from .server import run
        if not settings.jobs.redis_url:  # refuse now, not from inside the lifespan
            try:
                redis_server()
            except PrivateRedisError as exc:
                print(f"synthserve: {exc}", file=sys.stderr)
                return 2
        run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
            graceful_timeout_s=args.graceful_timeout)
        return 0
    if args.command == "worker":
        from .jobs.standalone import run_worker
        return run_worker(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
