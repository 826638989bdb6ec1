"""The compiled engine model (saga.compiled, scripts/build_compiled.py): the same decisions as
its Python sources, and a build older than its sources never runs.

Each run goes through a fresh interpreter, because a process imports the engine model once,
compiled or not. Without a compiled build (no C compiler on this machine) the tests that
compare the two skip and say so; scripts/setup.sh builds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saga import compiled

SRC = Path(compiled.__file__).resolve().parent.parent
needs_build = pytest.mark.skipif(
    compiled.state() != "compiled" or os.environ.get(compiled.PURE_PYTHON_ENV) == "1",
    reason="no current compiled build (python scripts/build_compiled.py) or SAGA_PURE_PYTHON=1",
)

# Every policy a fresh interpreter registers and the decode guard's wrappers, on a cluster
# small enough that every run evicts, preempts, folds decode runs and (guarded) mixed steps.
GUARDED = ["sglang+guard", "kvflow+guard", "infercept+guard", "vllm-affinity+guard"]

_RUN_ALL = """
import hashlib, json, sys
from saga.compiled import running_compiled
from saga.engine.cluster import get_cluster
from saga.sched.registry import list_policies
from saga.sim.run import run_policy
from saga.workloads.registry import build_workload

base = get_cluster("small")
engine = base.engine.model_copy(update={"kv_capacity_blocks": 512, "max_num_seqs": 16,
                                        "max_num_batched_tokens": 2048})
cluster = base.model_copy(update={"replicas": 2, "engine": engine})
workflows = build_workload("agents", seed=3).workflows
digests = {}
for policy in [*list_policies(), *sys.argv[1:]]:
    out = run_policy(cluster, policy, workflows, seed=5, kv_sample_interval=5.0)
    text = json.dumps(out.summary, sort_keys=True) + repr(out.result.calls)
    digests[policy] = [hashlib.sha256(text.encode()).hexdigest(), out.result.events]
print(json.dumps({"compiled": running_compiled(), "digests": digests}))
"""


def _python(
    code: str, *args: str, pure: bool, path: Path = SRC,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    env.pop(compiled.PURE_PYTHON_ENV, None)
    if pure:
        env[compiled.PURE_PYTHON_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
        check=True, timeout=900,
    )


def test_pure_python_runs_the_sources() -> None:
    probe = "import saga.compiled as c; print(c.state(), c.running_compiled())"
    assert _python(probe, pure=True).stdout.split() == ["pure", "False"]


@needs_build
def test_every_policy_decides_the_same_compiled_and_from_source() -> None:
    runs = {
        pure: json.loads(_python(_RUN_ALL, *GUARDED, pure=pure).stdout)
        for pure in (False, True)
    }
    assert runs[False]["compiled"] is True
    assert runs[True]["compiled"] is False
    assert runs[False]["digests"] == runs[True]["digests"]
    assert len(runs[False]["digests"]) >= 40
    assert set(GUARDED) < set(runs[False]["digests"])


@needs_build
def test_a_build_older_than_its_sources_runs_the_sources(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    probe = "import saga.compiled as c; print(c.state(), c.stale_modules(), c.running_compiled())"
    fresh = _python(probe, pure=False, path=copy)
    assert fresh.stdout.split() == ["compiled", "[]", "True"]
    assert fresh.stderr == ""
    replica = copy / "saga" / "engine" / "replica.py"
    replica.write_text(replica.read_text() + "\n# edited after the build\n")
    stale = _python(probe, pure=False, path=copy)
    assert stale.stdout.split() == ["stale", "['saga.engine.replica']", "False"]
    assert "older than its sources" in stale.stderr
    # every compiled module runs from source then, not only the edited one
    modules = ",".join(f"'{m}'" for m in compiled.COMPILED_MODULES)
    files = _python(
        f"import importlib; print(all(importlib.import_module(m).__file__.endswith('.py') "
        f"for m in [{modules}]))", pure=False, path=copy,
    )
    assert files.stdout.strip() == "True"


@needs_build
def test_a_missing_shared_library_runs_the_sources(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((copy / "saga" / compiled.MANIFEST_NAME).read_text())
    (copy / manifest["group"]).unlink()
    probe = "import saga.compiled as c; print(c.state(), c.running_compiled())"
    assert _python(probe, pure=False, path=copy).stdout.split() == ["stale", "False"]


@needs_build
def test_a_folder_holding_only_the_package_runs_the_build(tmp_path: Path) -> None:
    """vLLM's process sees SAGA through a folder with a link to the package alone
    (saga.integrations.engines.saga_pythonpath): mypyc's shared library must be inside it."""
    (tmp_path / "saga").symlink_to(SRC / "saga", target_is_directory=True)
    probe = "import saga.compiled as c; print(c.state(), c.running_compiled())"
    assert _python(probe, pure=False, path=tmp_path).stdout.split() == ["compiled", "True"]
