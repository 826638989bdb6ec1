"""Every bad input through the real `saga` entry point: exit 2, one line on stderr, no
traceback, and nothing written, checked before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saga.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


def _fails_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], expected: str
) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("saga: error: "), err
    assert expected in err, err


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a plain file\n")
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["simulate", "--seed", "-1", "--out", "{tmp}/run"],
         "--seed -1: a seed must be a non-negative integer"),
        (["simulate", "--out", "{file}/sub"],
         "--out {file}/sub: {file} is a file, not a directory"),
        (["simulate", "--out", "{file}/a/b"], "{file} is a file, not a directory"),
        (["simulate", "--out", "{file}"], "--out {file}: is a file, expected a directory"),
        (["bench", "scale", "--quick", "--out", "{file}/sub"],
         "--out {file}/sub: {file} is a file, not a directory"),
        (["bench", "scale", "--quick", "--out", "{tmp}/b", "--results", "{file}/r.md"],
         "--results {file}/r.md: {file} is a file, not a directory"),
        (["bench", "scale", "--quick", "--out", "{tmp}/b", "--results", "{tmp}"],
         "--results {tmp}: is a directory, expected a file"),
        (["bench", "scale", "--quick", "--engine", "llama", "--out", "{tmp}/b"],
         "--engine is for `saga bench real` only"),
        (["workload", "generate", "chat", "--seed", "-3", "--out", "{tmp}/w.jsonl"],
         "--seed -3: a seed must be a non-negative integer"),
        (["workload", "generate", "chat", "--out", "{file}/w.jsonl"],
         "--out {file}/w.jsonl: {file} is a file, not a directory"),
        (["workload", "generate", "chat", "--out", "{tmp}/missing/w.jsonl"],
         "--out {tmp}/missing/w.jsonl: directory {tmp}/missing does not exist"),
        (["workload", "generate", "chat", "--out", "{tmp}"],
         "--out {tmp}: is a directory, expected a file"),
        (["workload", "import", "claude-code", "{fixtures}/claude_code_mini.jsonl",
          "--seed", "-1", "--out", "{tmp}/c.jsonl"], "--seed -1"),
        (["workload", "import", "claude-code", "{fixtures}/claude_code_mini.jsonl",
          "--out", "{file}/c.jsonl"], "{file} is a file, not a directory"),
        (["workload", "stats", "{fixtures}/claude_code_mini.jsonl", "--plots", "{file}"],
         "--plots {file}: is a file, expected a directory"),
    ],
)
def test_bad_seed_or_output_fails_before_any_work(
    argv: list[str], expected: str, tmp_path: Path, a_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, file=a_file, fixtures=FIXTURES)

    before = _files(tmp_path)
    _fails_in_one_line([fill(a) for a in argv], capsys, fill(expected))
    assert _files(tmp_path) == before
    assert a_file.read_text() == "a plain file\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_without_write_permission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        _fails_in_one_line(["simulate", "--out", str(locked / "run")], capsys,
                           f"no permission to write in {locked}")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_a_negative_seed_in_a_scenario_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "mine.toml"
    scenario.write_text(
        'name = "mine"\ncluster = "test-2"\npolicies = ["saga"]\nseeds = [0, -1]\n'
        '[[workloads]]\nname = "chat"\n'
    )
    _fails_in_one_line(["bench", str(scenario), "--out", str(tmp_path / "b")], capsys,
                       f"{scenario}: seeds.1: Input should be greater than or equal to 0")
    assert not (tmp_path / "b").exists()


def test_a_broken_json_line_names_its_real_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "broken.jsonl"
    line = '{"workflow": "w1", "tenant": "t", "agent": "a", "calls": ['
    assert len(line) == 58  # the JSON breaks off at its end: column 59
    trace.write_text(line + "\n")
    _fails_in_one_line(["simulate", "--trace", str(trace), "--out", str(tmp_path / "run")],
                       capsys, "broken.jsonl:1: invalid JSON: Expecting value at column 59")
    assert not (tmp_path / "run").exists()



def test_the_python_api_refuses_a_negative_seed_in_one_line() -> None:
    from saga import simulate
    from saga.errors import UserError

    with pytest.raises(UserError, match=r"^seed -1: a seed must be a non-negative integer$"):
        simulate(workload="coding-agent", params={"count": "2"}, seed=-1)
