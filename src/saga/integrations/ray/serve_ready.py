"""Start Ray Serve and run an application, waiting for readiness as long as it takes.

Ray Serve waits a fixed 60 s for its HTTP proxy, twice (``serve.start``: the proxy
actor's ``ready``; ``serve.run``: the proxy serving the new application), with no option
to wait longer (``ray.serve._private.constants.HTTP_PROXY_TIMEOUT``), and its
controller kills and restarts a proxy that is not ready within
``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S`` (5 s, then 10 s, 15 s ... after each restart).
A proxy's worker process imports for a few CPU seconds: on a loaded machine that is
minutes of wall time, and ``serve.start`` failed either way, with a ``TimeoutError`` or
with the ``ActorDiedError`` of the proxy it waited for ("killed by ray.kill ... never
ran"). Here:

* the controller gets a ready-check timeout of :data:`PROXY_READY_CHECK_S` (Serve's
  public ``controller_options``), so a slow proxy is not restarted while it starts;
* when Serve gives up anyway (either error), the start goes on: Serve's own state is
  polled (``serve.status()``: the proxies HEALTHY, the application RUNNING), then the
  proxy's route table (``/-/routes``) until it serves the application, up to
  ``deadline_s`` seconds in all. An application that fails to deploy ends the start at
  once; a proxy that never becomes ready, at the deadline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError

#: Seconds Serve's controller gives a starting proxy before restarting it.
PROXY_READY_CHECK_S = 120.0
#: Seconds a start may take in all (Serve's proxy and the application), by default.
START_DEADLINE_S = 600.0
#: Seconds between two looks at Serve's state while waiting.
POLL_S = 0.5


def controller_options() -> dict[str, Any]:
    """Serve's controller options: a starting proxy is given :data:`PROXY_READY_CHECK_S`."""
    env = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": str(PROXY_READY_CHECK_S)}
    return {"runtime_env": {"env_vars": env}}


def start_serve(http_options: dict[str, Any], deadline_s: float = START_DEADLINE_S) -> None:
    """``serve.start`` with the controller's options, waiting past Serve's 60 s for the
    proxies to be HEALTHY (up to ``deadline_s``)."""
    deadline = time.monotonic() + deadline_s
    try:
        serve.start(http_options=http_options, controller_options=controller_options())
    except (TimeoutError, RayActorError):
        # Serve waited 60 s, or the proxy it waited for was restarted by the controller
        # (ActorDiedError): the controller exists (a second serve.start connects to it
        # without waiting again), and its proxies are still starting.
        serve.start(http_options=http_options)
        _until(_proxies_healthy, "Serve's proxies HEALTHY", deadline)


def run_app(app: Any, *, name: str, route_prefix: str, url: str,
            deadline_s: float = START_DEADLINE_S) -> Any:
    """``serve.run``, waiting past Serve's 60 s for the proxy at ``url`` to serve the
    application at ``route_prefix`` (up to ``deadline_s``); the ingress's handle."""
    deadline = time.monotonic() + deadline_s
    try:
        return serve.run(app, name=name, route_prefix=route_prefix)
    except (TimeoutError, RayActorError):
        # The application is deployed (serve.run waits for RUNNING without a limit
        # before its 60 s wait for the proxies): wait for them to route to it.
        _until(lambda: _app_running(name) and _proxies_healthy(),
               f"application {name!r} RUNNING behind HEALTHY proxies", deadline)
        _until(lambda: _routed(url, route_prefix), f"{url} routing {route_prefix}", deadline)
        return serve.get_app_handle(name)


def _until(condition: Callable[[], bool], what: str, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def _proxies_healthy() -> bool:
    """Every proxy HEALTHY (one UNHEALTHY is restarted by the controller: waited for)."""
    proxies = serve.status().proxies
    return bool(proxies) and all(status == "HEALTHY" for status in proxies.values())


def _app_running(name: str) -> bool:
    app = serve.status().applications.get(name)
    if app is None:
        return False
    if app.status == "DEPLOY_FAILED":
        raise RuntimeError(f"Serve application {name!r} failed to deploy: {app.message}")
    return bool(app.status == "RUNNING")


def _routed(url: str, route_prefix: str) -> bool:
    """Whether the proxy at ``url`` lists ``route_prefix`` in its route table."""
    try:
        with urllib.request.urlopen(url + "/-/routes", timeout=10) as response:
            routes = json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False
    return route_prefix in routes
