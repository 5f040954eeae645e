import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import suite.config  # noqa: F401  (registers the schemas)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def require(available: bool, what: str) -> None:
    """Skip a test whose outside part is missing on a developer's machine; in CI (`CI` set),
    which installs every part (the Slurm cluster, chromium), fail instead: a missing part must
    not turn the suite green by skipping."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing: .ci/run should have provided it")
    pytest.skip(f"{what} is missing")


def cluster_up() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """For tests that need the local Slurm cluster (slurm/local-cluster.sh up)."""
    require(cluster_up(), "a Slurm cluster (run slurm/local-cluster.sh up)")


def nodes_up() -> list:
    """The local cluster's nodes that are idle, mixed or allocated."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-t", "idle,mixed,allocated", "-o", "%N"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(set(out.stdout.split())) if out.returncode == 0 else []


@pytest.fixture(scope="session")
def two_nodes():
    """For tests that need the local cluster's two test hosts (slurm/local-cluster.sh up --nodes 2)."""
    require(nodes_up() == ["node1", "node2"],
            "a 2-node Slurm cluster, node1 and node2 (run slurm/local-cluster.sh up --nodes 2)")


@pytest.fixture
def compose_cfg():
    """Compose the suite's config as `python -m suite.sweep` would, with overrides."""
    def _compose(*overrides: str, return_hydra_config: bool = False):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="sweep", overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
    return _compose


def run_sweep(results_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m suite.sweep -m ...` for real, its sweep folders under results_dir."""
    env = {**os.environ, "SUITE_RESULTS_DIR": str(results_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "suite.sweep", "-m", *overrides], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def sweep_dirs(results_dir: Path) -> list[Path]:
    return sorted(p for p in Path(results_dir).iterdir() if p.is_dir()) if Path(results_dir).exists() else []
