"""``saga ray``: SAGA as the request router of a Ray Serve application (docs/ray.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saga.errors import UserError
from saga.integrations.ray.config import RayAppConfig

EPILOG = """\
examples:
  saga ray --replicas 2 --routers 2 --cluster small
      a local Ray instance; the OpenAI API on http://127.0.0.1:8000/v1, two ingress
      replicas (each with its SagaRequestRouter) in front of two emulator replicas
  saga ray --config ray.toml --address auto
      the same application on a Ray cluster started with `ray start --head` (and
      `ray start --address HEAD:6379` on the other nodes); replicas spread over its nodes
  saga ray --engine vllm --vllm-url http://127.0.0.1:8101 --vllm-url http://127.0.0.1:8102
      two replicas fronting running vLLM servers (SAGA's retention decision goes to
      them as saga_ttl, which SAGA's scheduler inside vLLM carries out)
  ... --vllm-kv-events tcp://127.0.0.1:5601 --vllm-kv-events tcp://127.0.0.1:5602
      replica i also reads vLLM i's KV cache events there (start vLLM i with
      --kv-events-config naming that endpoint): the routers see the exact prefixes

--config FILE: a TOML file of RayAppConfig's fields (flags given override it).
routers: saga-ray (SAGA's policy), ray-pow2, ray-consistent-hash, ray-prefix-affinity.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "ray", help="serve the OpenAI API on Ray Serve with SAGA as its request router",
        description="Run a Ray Serve application: an OpenAI-compatible ingress whose "
        "request router is SAGA's policy, in front of emulator or vLLM replicas.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="a TOML file of the application's settings")
    p.add_argument("--router", help="request router (default: saga-ray)")
    p.add_argument("--policy", help="SAGA's policy for saga-ray (default: saga)")
    p.add_argument("--routers", type=int, help="ingress replicas (default: 2)")
    p.add_argument("--replicas", type=int, help="engine replicas (default: 2)")
    p.add_argument("--engine", choices=["emulator", "vllm"], help="replica kind")
    p.add_argument("--vllm-url", action="append", dest="vllm_urls",
                   help="a vLLM server (repeat: one per replica)")
    p.add_argument("--vllm-kv-events", action="append", dest="vllm_kv_events",
                   help="where replica i reads vLLM i's KV cache events, tcp://HOST:PORT "
                   "(repeat: one per replica; vLLM's --kv-events-config names it)")
    p.add_argument("--cluster", help="the emulator's preset (default: small)")
    p.add_argument("--time-scale", type=float, help="emulated model seconds per second")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto: the local `ray start` one; default: "
                   "a new local instance)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local instance")
    p.add_argument("--port", type=int, default=8000, help="Serve's HTTP port (default: 8000)")
    p.set_defaults(handler=run)


def config_from(args: argparse.Namespace) -> RayAppConfig:
    from pydantic import ValidationError

    fields: dict[str, object] = {}
    if args.config is not None:
        if not args.config.is_file():
            raise UserError(f"--config {args.config}: no such file")
        import tomllib

        fields.update(tomllib.loads(args.config.read_text()))
    for name in ("router", "policy", "routers", "replicas", "engine", "vllm_urls",
                 "vllm_kv_events", "cluster", "time_scale"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    try:
        return RayAppConfig.model_validate(fields)
    except ValidationError as error:
        raise UserError(f"ray config: {error.errors()[0]['msg']}") from None


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("Ray is not installed: pip install -e '.[ray]'") from None
    import signal
    import threading

    from ray import serve

    from saga.integrations.ray.app import start

    start(config, address=args.address, port=args.port, num_cpus=args.num_cpus)
    print(f"saga ray: {config.router} routing {config.replicas} {config.engine} replicas "
          f"behind {config.routers} ingress replicas; OpenAI API on "
          f"http://127.0.0.1:{args.port}{config.route_prefix.rstrip('/')}/v1", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
    return 0
