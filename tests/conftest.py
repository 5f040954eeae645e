import functools
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import suite.config  # noqa: F401  (registers the schemas)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(autouse=True)
def _fixed_seeds():
    """Every randomised check draws the same numbers on every run: the global generators are
    seeded before each test (torch's and numpy's where a test module has imported them)."""
    random.seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)


# What a rank's set-up writes into os.environ (rank.distributed_env, _prepare_process). A test
# that runs it in this process must not leave them behind: every later sweep's jobs inherit this
# process's environment (sbatch exports it), and an inherited MASTER_PORT made two jobs on one
# node listen on the same port (EADDRINUSE in the scaling test, CI 2026-12-08).
RANK_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                  "SUITE_MASTER_ADDR", "DS_ACCELERATOR", "OMP_NUM_THREADS", "TORCH_EXTENSIONS_DIR")


@pytest.fixture(autouse=True)
def _rank_variables_restored():
    before = {name: os.environ.get(name) for name in RANK_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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
    """The local cluster's nodes that are idle, mixed or allocated and responding. A node
    resumed a moment ago shows `idle*` (not responding) for about a second, and sbatch
    --test-only, which the suite asks before it submits, refuses a job that needs it."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return sorted({node for node, state in (line.split() for line in out.stdout.splitlines())
                   if state in ("idle", "mix", "alloc")})


def wait_for_nodes(expected=("node1", "node2"), limit_s: float = 60.0) -> list:
    """Poll until the expected nodes are up and responding (or the limit passes); the nodes up."""
    import time

    deadline = time.monotonic() + limit_s
    while nodes_up() != sorted(expected) and time.monotonic() < deadline:
        time.sleep(0.5)
    return nodes_up()


@pytest.fixture(scope="session")
def two_nodes():
    """For tests that need the local cluster's two test hosts (slurm/local-cluster.sh up --nodes 2)."""
    require(wait_for_nodes() == ["node1", "node2"],
            "a 2-node Slurm cluster, node1 and node2 (run slurm/local-cluster.sh up --nodes 2)")


@functools.lru_cache(maxsize=1)
def _config_fingerprint() -> str:
    """What a composed config depends on: the config files, the schemas and plugins that
    register config nodes, Hydra's and OmegaConf's versions, where the config folder and the
    working directory are (Hydra's own config records both paths)."""
    import hydra
    import omegaconf

    digest = hashlib.sha256(f"{hydra.__version__} {omegaconf.__version__} {CONF} {os.getcwd()}".encode())
    for path in sorted([*CONF.rglob("*.yaml"), REPO / "suite" / "config.py", *(REPO / "hydra_plugins").rglob("*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()


# Composed configs, kept between test processes: Hydra takes about 0.2 s a composition, a
# pickled config 0.01 s to load. Mutation testing (bench/mutation.sh) runs the unit tests once
# per mutant, each time in a new process; the generated plan tests compose ~100 configs.
COMPOSED = Path(tempfile.gettempdir()) / "suite-tests-composed"


@pytest.fixture
def compose_cfg():
    """Compose the suite's config as `python -m suite.sweep` would, with overrides (from the
    cache of earlier compositions of the same overrides and the same config files)."""
    def _compose(*overrides: str, return_hydra_config: bool = False):
        key = json.dumps([_config_fingerprint(), list(overrides), return_hydra_config])
        path = COMPOSED / f"{hashlib.sha256(key.encode()).hexdigest()}.pkl"
        try:
            return pickle.loads(path.read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError):
            pass
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="sweep", overrides=list(overrides),
                          return_hydra_config=return_hydra_config)
        COMPOSED.mkdir(exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(pickle.dumps(cfg))
        os.replace(partial, path)  # whole or absent for a reader in another process
        return cfg
    return _compose


def run_sweep(results_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m suite.sweep -m ...` for real, its sweep folders under results_dir."""
    env = {**os.environ, "SUITE_RESULTS_DIR": str(results_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "suite.sweep", "-m", *overrides], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def sweep_dirs(results_dir: Path) -> list[Path]:
    return sorted(p for p in Path(results_dir).iterdir() if p.is_dir()) if Path(results_dir).exists() else []
