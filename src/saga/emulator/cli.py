"""``saga emulate``: engine-model replicas behind an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from saga.errors import UserError

EPILOG = """\
examples:
  saga emulate --replicas 2 --cluster small --port 9000
      two replicas of the `small` preset on 127.0.0.1:9000 and :9001
  saga emulate --replicas 4 --cluster test-2 --port 9100 --time-scale 20
      the model runs twenty times faster than real time (for tests)

replica i listens on PORT + i. See docs/gateway.md for the API.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``emulate`` command to the ``saga`` parser."""
    p = commands.add_parser(
        "emulate",
        help="serve engine-model replicas over an OpenAI-compatible API in real time",
        description="Serve emulated inference replicas: the engine model behind an "
        "OpenAI-compatible API, advancing in real time, with a KV control API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=None,
                   help="replicas to serve (default: the preset's count)")
    p.add_argument("--cluster", default="small", help="cluster preset (default: small)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port of replica 0 (default: 9000)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="model seconds per wall second (default: 1, real time)")
    p.add_argument("--block-tokens", type=int, default=64, help="KV block size (default: 64)")
    p.add_argument("--stream-interval", type=float, default=0.05,
                   help="most model seconds between streamed chunks (default: 0.05)")
    p.add_argument("--admin-key", default=os.environ.get("SAGA_EMULATOR_ADMIN_KEY", ""),
                   help="Bearer key the KV control API (/saga/kv/*), /saga/state and "
                   "/saga/calls require "
                   "(default: $SAGA_EMULATOR_ADMIN_KEY; none: open, loopback only)")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="most calls queued per replica; more get a 429 (default: 4096)")


def run(args: argparse.Namespace) -> int:
    from saga.aio import run as run_loop
    from saga.engine.cluster import get_cluster

    from .engine import Emulator
    from .server import serve

    cluster = get_cluster(args.cluster)
    if args.replicas is not None and args.replicas < 1:
        raise UserError("--replicas must be at least 1")
    if args.time_scale <= 0:
        raise UserError("--time-scale must be > 0")
    if args.max_queue < 1:
        raise UserError("--max-queue must be at least 1")
    if args.block_tokens < 1:
        raise UserError("--block-tokens must be at least 1")
    if not args.admin_key and not _loopback(args.host):
        raise UserError(f"--host {args.host}: the KV control API would be open to the "
                        "network; give --admin-key (or bind 127.0.0.1)")
    replicas = args.replicas or cluster.replicas
    if not 0 < args.port <= 65535 - replicas + 1:
        raise UserError(f"--port {args.port}: replicas need ports {args.port}..+{replicas - 1}")
    emulator = Emulator(
        cluster, replicas, time_scale=args.time_scale, block_tokens=args.block_tokens,
        stream_interval=args.stream_interval, max_waiting=args.max_queue,
    )
    print(
        f"saga emulate: {replicas} x {cluster.model} on {cluster.gpu} ({cluster.name}), "
        f"http://{args.host}:{args.port}..{args.port + replicas - 1}, "
        f"time scale {args.time_scale:g}",
        flush=True,
    )
    try:
        run_loop(serve(emulator, args.host, args.port, admin_key=args.admin_key))
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {error}") from None
    except KeyboardInterrupt:
        pass
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    """``saga emulate ...`` (for ``python -m``): the same parser and errors as ``saga``."""
    from saga.cli import main as saga_main

    return saga_main(["emulate", *(sys.argv[1:] if argv is None else argv)])
