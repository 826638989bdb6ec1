"""``saga serve``: the OpenAI-compatible gateway in front of real backends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saga.errors import UserError

EPILOG = """\
examples:
  saga emulate --replicas 2 --cluster small --port 9000 &
  saga serve --config examples/gateway.toml
      then point any OpenAI client at http://127.0.0.1:8000/v1

workflow headers: x-saga-workflow, x-saga-agent, x-saga-tool, x-saga-end.
See docs/gateway.md for the config file and the metrics.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command to the ``saga`` parser."""
    p = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway in front of inference backends",
        description="Serve an OpenAI-compatible API that schedules each call with a SAGA "
        "policy and forwards it to one of the configured backends.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="gateway config (.toml or .json)")
    p.add_argument("--host", default=None, help="override the config's host")
    p.add_argument("--port", type=int, default=None, help="override the config's port")
    p.add_argument("--policy", default=None, help="override the config's policy")


def run(args: argparse.Namespace) -> int:
    from saga.aio import run as run_loop

    from .app import Gateway, serve
    from .config import load_config

    config = load_config(args.config)
    updates = {k: v for k, v in (("host", args.host), ("port", args.port),
                                 ("policy", args.policy)) if v is not None}
    if updates:
        config = config.model_validate({**config.model_dump(), **updates})
    Gateway(config)  # fail fast: unknown policy, plugin, cluster
    print(
        f"saga serve: http://{config.host}:{config.port}/v1, policy {config.policy}, "
        f"{len(config.backends)} backends, store {config.store.kind}",
        flush=True,
    )
    try:
        run_loop(serve(config))
    except OSError as error:
        raise UserError(f"cannot listen on {config.host}:{config.port}: {error}") from None
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """``saga serve ...`` (for ``python -m``): the same parser and errors as ``saga``."""
    from saga.cli import main as saga_main

    return saga_main(["serve", *(sys.argv[1:] if argv is None else argv)])
