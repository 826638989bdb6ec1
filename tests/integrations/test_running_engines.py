"""running_engines with a stand-in engine: a small Python HTTP server started in the real
engine's place (``start_llamacpp(binary=...)``, ``start_vllm(python=...)``), so the start,
the wait until ready and the stop are the real ones. What it does comes from its model's
name: ``ready`` answers /health 200, ``loading`` answers 503 for ever, ``crash`` exits 3."""

from __future__ import annotations

import socket
import sys
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from saga.integrations import engines as eng

FAKE_ENGINE = """\
import http.server
import pathlib
import sys

argv = sys.argv
port = int(argv[argv.index("--port") + 1])
mode = pathlib.Path(argv[argv.index("--model") + 1]).stem
print(f"fake engine {mode} on port {port}", flush=True)
if mode == "crash":
    print("cannot load model", flush=True)
    sys.exit(3)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if mode == "ready" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """The stand-in as an executable (llama-server's place) that also takes vLLM's
    ``-m vllm.entrypoints.openai.api_server`` (the python's place: ignored)."""
    script = tmp_path / "fake-engine"
    script.write_text(f"#!{sys.executable}\n{FAKE_ENGINE}")
    script.chmod(0o755)
    return script


def _llama(fake: Path, tmp_path: Path, mode: str) -> eng.Starter:
    return partial(eng.start_llamacpp, tmp_path / f"{mode}.gguf", eng.free_port(), binary=fake,
                   log_dir=tmp_path / "logs", slot_save_path=tmp_path / "slots")


def _vllm(fake: Path, tmp_path: Path, mode: str) -> eng.Starter:
    return partial(eng.start_vllm, tmp_path / mode, eng.free_port(), python=fake,
                   log_dir=tmp_path / "logs")


def _kept(started: list[eng.EngineProc], starter: eng.Starter) -> eng.Starter:
    """``starter``, keeping what it starts in ``started`` (the context manager yields nothing
    when a start or a wait fails: the test still checks each engine is gone)."""
    def start(*, wait: bool) -> eng.EngineProc:
        started.append(starter(wait=wait))
        return started[-1]
    return start


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a holder
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _health(url: str) -> int:
    with urllib.request.urlopen(url + "/health", timeout=5) as response:
        status: int = response.status
        return status


def test_ready_engines_are_yielded_and_all_stopped_after(fake: Path, tmp_path: Path) -> None:
    with eng.running_engines([_llama(fake, tmp_path, "ready"), _vllm(fake, tmp_path, "ready")],
                             ready_timeout=30) as procs:
        assert [p.kind for p in procs] == ["llamacpp", "vllm"]
        assert [_health(p.base_url) for p in procs] == [200, 200]
        assert all(p.alive() for p in procs)
    assert not any(p.alive() for p in procs)
    assert all(_port_free(p.port) for p in procs)
    # the logs stay where each start put them
    assert [p.log_path for p in procs] == [tmp_path / "logs" / f"llamacpp-{procs[0].port}.log",
                                          tmp_path / "logs" / f"vllm-{procs[1].port}.log"]
    assert all("fake engine ready" in p.log_path.read_text() for p in procs)


def test_an_error_in_the_body_stops_every_engine(fake: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError), eng.running_engines(
            [_llama(fake, tmp_path, "ready")], ready_timeout=30) as procs:
        raise KeyError("the run failed")
    assert not procs[0].alive() and _port_free(procs[0].port)


# (engine, modes in start order, ready_timeout, the one that fails, its error's start): the
# one never ready goes first, so it fails whatever the machine's load (the other is started,
# not waited for); the one that exits is waited for after a ready one
FAILURES = [
    (_llama, ("loading", "ready"), 1.0, 0, "llamacpp on port {port} not ready after 1 s; "
     "log {log}:\n"),
    (_vllm, ("ready", "crash"), 30.0, 1, "vllm on port {port} exited with code 3 before it "
     "was ready; log {log}:\n"),
]


@pytest.mark.parametrize(("engine", "modes", "timeout", "failing", "message"), FAILURES,
                         ids=["not-ready-in-time", "exits-before-ready"])
def test_an_engine_that_fails_to_be_ready_stops_all_and_names_its_log(
        fake: Path, tmp_path: Path, engine: Callable[[Path, Path, str], eng.Starter],
        modes: tuple[str, str], timeout: float, failing: int, message: str) -> None:
    started: list[eng.EngineProc] = []
    with pytest.raises(eng.EngineError) as error, eng.running_engines(
            [_kept(started, engine(fake, tmp_path, mode)) for mode in modes],
            ready_timeout=timeout):
        pytest.fail("yielded though an engine was not ready")
    proc = started[failing]
    assert str(error.value).startswith(message.format(port=proc.port, log=proc.log_path))
    if modes[failing] == "crash":  # its log's tail is in the error
        assert str(error.value).endswith("cannot load model\n")
    assert len(started) == 2 and not any(p.alive() for p in started)
    assert all(_port_free(p.port) for p in started)


def test_a_start_that_fails_stops_the_engines_already_started(
        fake: Path, tmp_path: Path) -> None:
    first = _llama(fake, tmp_path, "ready")
    missing = partial(eng.start_llamacpp, tmp_path / "ready.gguf", eng.free_port(),
                      binary=tmp_path / "no-such-server", log_dir=tmp_path / "logs",
                      slot_save_path=tmp_path / "slots")
    started: list[eng.EngineProc] = []
    with pytest.raises(FileNotFoundError), eng.running_engines(
            [_kept(started, first), missing], ready_timeout=30):
        pytest.fail("yielded though an engine did not start")
    assert len(started) == 1 and not started[0].alive()
    assert _port_free(started[0].port)
