"""bench/gpu_wheels.sh and bench/gpu_check.sh without a GPU box or the network.

gpu_wheels.sh fetches what the offline GPU box lacks and states what the box already has (BOX);
its final check resolves pyproject.toml's dependencies against both. A dependency added to
pyproject.toml (fsspec, apache-otava) that neither list names breaks that check only when
someone next builds the wheels, after the fetch; these tests catch it at once, from the text of
the script, pyproject.toml and the metadata of what .venv installed (the same versions).
"""
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# the box: CPython 3.12 on x86-64 Linux (gpu_wheels.sh's TARGET)
BOX_ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def script_lists() -> dict:
    """BINARY, SDIST and BOX of gpu_wheels.sh: normalized name -> pinned version ('' if none)."""
    text = "\n".join(line.split("#", 1)[0] for line in (REPO / "bench/gpu_wheels.sh").read_text().splitlines())
    lists = {}
    for name in ("BINARY", "SDIST", "BOX"):
        body = re.search(rf"^{name}=\((.*?)\)", text, re.M | re.S)
        assert body, f"gpu_wheels.sh has no {name}=(...)"
        specs = [s.partition("==") for s in body.group(1).split()]
        lists[name] = {norm(n): v for n, _, v in specs}
    return lists


def project_dependencies():
    with open(REPO / "pyproject.toml", "rb") as fh:
        return [Requirement(r) for r in tomllib.load(fh)["project"]["dependencies"]]


def test_every_dependency_is_fetched_or_stated_to_be_on_the_box():
    lists = script_lists()
    fetched = lists["BINARY"].keys() | lists["SDIST"].keys()
    missing = [str(r) for r in project_dependencies()
               if norm(r.name) not in fetched and norm(r.name) not in lists["BOX"]]
    assert not missing, (f"pyproject.toml's dependencies that bench/gpu_wheels.sh neither fetches "
                         f"(BINARY, SDIST) nor says the GPU box has (BOX): {missing}")


def test_every_indirect_dependency_is_fetched_or_on_the_box():
    """What the fetched packages need in turn (Requires-Dist of the versions .venv installed, for
    CPython 3.12 on Linux), down to what the box has: each must be fetched or in BOX."""
    lists = script_lists()
    fetched = lists["BINARY"].keys() | lists["SDIST"].keys()
    seen, missing, todo = set(), [], [(r, "pyproject.toml") for r in project_dependencies()]
    while todo:
        req, who = todo.pop()
        name = norm(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(BOX_ENV)):
            continue
        seen.add(name)
        if name in lists["BOX"]:
            continue  # the box has it, and what it needs
        if name not in fetched:
            missing.append(f"{req.name} (needed by {who})")
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (a marker for 3.12 only): its name is checked, not its deps
        todo += [(Requirement(r), req.name) for r in requires]
    assert not missing, ("bench/gpu_wheels.sh neither fetches nor lists on the box: " + ", ".join(sorted(missing)))


def test_the_fetched_versions_are_the_ones_venv_resolved():
    lists = script_lists()
    differ = []
    for name, version in {**lists["BINARY"], **lists["SDIST"]}.items():
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ.append(f"{name}=={version}: not installed in .venv")
            continue
        if here != version:
            differ.append(f"{name}=={version}: .venv has {here}")
    assert not differ, "bench/gpu_wheels.sh pins other versions than .venv runs the tests with: " + "; ".join(differ)


def test_the_check_refuses_a_sweep_folder_inside_what_comes_back(tmp_path):
    """OUT comes back from the box (8 files at most): the sweep's many files must stay outside it."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "SWEEP_DIR": str(tmp_path / "out" / "sweep")}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is inside OUT" in proc.stderr
    assert not (tmp_path / "out" / "sweep").exists()


def test_the_check_removes_only_a_sweep_folder_it_made(tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "keep.txt").write_text("not a sweep")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "SWEEP_DIR": str(precious)}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not made by gpu_check.sh" in proc.stderr, proc.stdout + proc.stderr
    assert (precious / "keep.txt").read_text() == "not a sweep"
