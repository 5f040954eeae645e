"""One registry of metrics: every metric a run computes is in it, the runs table has a column
for each, and the docs' metric table names each."""
from pathlib import Path

from suite import metric_registry
from suite.plan import plan_run, to_object
from suite.report import collate

from conftest import REPO


def test_every_metric_of_a_training_run_is_registered(compose_cfg):
    """The rank's own metric assembly, fed measurements as a run would give them."""
    from suite.rank import _training_metrics
    from suite.workload.train import Measurements

    typed = to_object(compose_cfg("strategy=zero2", "train.timed_steps=3"))
    plan = plan_run(typed)
    measured = Measurements(step_times_s=[0.1, 0.12, 0.11], losses=[6.3, 6.2, 6.1, 6.0, 5.9, 5.8],
                            peak_memory_bytes=2 ** 30, init_s=1.5, memory_capacity_bytes=2 ** 34,
                            telemetry={"energy_j": 10.0, "power_mean_w": 500.0, "sm_clock_mean_mhz": 1900.0,
                                       "sm_clock_min_mhz": 1800.0, "temperature_max_c": 60,
                                       "throttle_reasons": [], "throttled": False})
    metrics = _training_metrics(typed, plan, measured)
    assert metric_registry.unregistered(metrics) == []
    # and a metric that is not registered is found, not dropped silently
    assert metric_registry.unregistered({**metrics, "new_metric": 1}) == ["new_metric"]


def test_the_runs_table_has_a_column_for_every_scalar_metric():
    frame = collate.to_frame([])
    assert set(metric_registry.scalar_columns()) <= set(frame.columns)
    assert all(str(frame[c].dtype) == "boolean" for c in metric_registry.bool_columns())


def test_the_docs_metric_table_names_every_registered_metric():
    text = (Path(REPO) / "docs" / "runs-and-metrics.md").read_text()
    missing = [m.name for m in metric_registry.METRICS if f"`{m.name}`" not in text]
    assert not missing, f"not in docs/runs-and-metrics.md: {missing}"


def test_every_metric_has_a_unit_and_a_known_format():
    for m in metric_registry.METRICS:
        assert m.kind in ("number", "bool", "json"), m.name
        assert m.fmt in ("pct", "share", "mib", "flag") or format(1.5, m.fmt), m.name
        assert m.workloads and set(m.workloads) <= {"train", "gemm", "allreduce", "preflight"}, m.name
