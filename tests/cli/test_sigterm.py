"""A `saga` command killed with SIGTERM unwinds like Ctrl-C: what it started (real engines,
in `saga bench real`) is stopped by its `with` blocks, not left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import argparse, sys, time
    from pathlib import Path
    from saga import cli

    out = Path(sys.argv[1])

    def handler(args):
        try:
            (out / "started").write_text("")
            time.sleep(120)
        finally:  # where `with start_engines(...)` stops the engines
            (out / "stopping").write_text("")
            time.sleep(1.0)  # a second SIGTERM now must not cut the stopping short
            (out / "unwound").write_text("")
        return 0

    class Parser:  # the command line names this handler
        def parse_args(self, argv):
            return argparse.Namespace(handler=handler)

    cli.build_parser = Parser
    sys.exit(cli.main([]))
""")


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, f"never got to {path.name}"
        time.sleep(0.01)


def test_sigterm_unwinds_the_command_and_exits_130(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "started", proc)
        proc.send_signal(signal.SIGTERM)
        _wait_for(tmp_path / "stopping", proc)
        proc.send_signal(signal.SIGTERM)  # ignored: the unwinding goes on
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (tmp_path / "unwound").exists()
    assert proc.returncode == 130 and "saga: interrupted" in err
