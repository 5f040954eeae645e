"""Result records: atomic writes, JSON without NaN, redaction, failure classification."""
import json

import pytest
import torch

from suite import results


def record(**overrides):
    base = dict(run_id="s/0", sweep_id="s", status="ok", error=None,
                config={"model": {"name": "tiny"}}, axes={"model": "tiny"},
                metrics={"tokens_per_s": 1.0, "loss_last": float("nan")}, env={},
                started_at="t0", finished_at="t1")
    return results.make_record(**{**base, **overrides})


def test_record_is_written_atomically_and_reads_back(tmp_path):
    path = results.write_record(tmp_path / "run", record())
    assert path.name == "result.json"
    data = json.loads(path.read_text())  # strict JSON: NaN became null
    assert data["metrics"] == {"tokens_per_s": 1.0, "loss_last": None}
    assert data["schema_version"] == results.SCHEMA_VERSION
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["result.json"]  # no temp file left
    results.write_record(tmp_path / "run", record(status="error", error="boom"))
    assert results.read_record(path)["status"] == "error"


def test_same_config_same_hash_and_unknown_status_refused():
    assert record()["config_hash"] == record(run_id="other")["config_hash"]
    assert record()["config_hash"] != record(config={"model": {"name": "gpt_125m"}})["config_hash"]
    with pytest.raises(ValueError, match="status='fine'"):
        record(status="fine")


def test_secrets_are_redacted_by_name_and_inside_urls():
    assert results.redact("HF_TOKEN", "abc") == "<redacted>"
    assert results.redact("env", {"WANDB_API_KEY": "k", "NCCL_DEBUG": "INFO"}) == {
        "WANDB_API_KEY": "<redacted>", "NCCL_DEBUG": "INFO"}
    assert results.redact("url", "https://user:pw@host/x") == "https://<redacted>@host/x"
    rec = record(config={"cluster": {"env": {"MY_SECRET": "s3cr3t"}}})
    assert "s3cr3t" not in json.dumps(rec)


def test_failures_are_classified():
    assert results.classify_exception(torch.OutOfMemoryError("CUDA out of memory")) == "oom"
    assert results.classify_exception(RuntimeError("CUDA error: out of memory")) == "oom"
    assert results.classify_exception(ValueError("bad")) == "error"
    assert results.status_of_losses([1.0, 2.0]) == ("ok", None)
    assert results.status_of_losses([1.0, float("inf")]) == ("nan", "non-finite loss inf at step 1")


def test_every_credential_word_is_redacted_whatever_its_case():
    # issue 18: each word of the pattern, so that dropping one from it fails a test
    for name in ("DB_PASSWORD", "smb_passwd", "GCP_CREDENTIALS", "GITHUB_TOKEN", "SSH_KEY", "AWS_SECRET"):
        assert results.redact(name, "v") == "<redacted>", name
    assert results.redact("NCCL_SOCKET_IFNAME", "eth0") == "eth0"


def test_schema_fields_named_like_credentials_are_kept():
    """data.token_dtype is not a secret: redacted, a record's config could not be rerun."""
    assert results.redact("config", {"data": {"token_dtype": "uint16"}, "cluster": {"env": {"HF_TOKEN": "t"}}}) \
        == {"data": {"token_dtype": "uint16"}, "cluster": {"env": {"HF_TOKEN": "<redacted>"}}}


def test_a_write_that_fails_halfway_leaves_the_previous_record_whole(tmp_path, monkeypatch):
    """Atomicity, shown: a writer that dies in the middle of writing (here json.dump raises after
    writing half) leaves readers the old record, never half a file. A plain open(..., "w") and
    write would have truncated it (issue 18's surviving mutant)."""
    path = results.write_record(tmp_path / "run", record())
    before = path.read_text()
    real_dump = json.dump

    def dump_half_then_die(obj, f, **kwargs):
        text = json.dumps(obj, **kwargs)
        f.write(text[: len(text) // 2])
        f.flush()
        raise OSError("disk full (injected)")

    monkeypatch.setattr(json, "dump", dump_half_then_die)
    with pytest.raises(OSError, match="injected"):
        results.write_record(tmp_path / "run", record(status="error", error="boom"))
    monkeypatch.setattr(json, "dump", real_dump)
    assert path.read_text() == before and json.loads(before)["status"] == "ok"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["result.json"]  # no temp file left


def test_a_new_attempt_never_reads_the_previous_attempts_record(tmp_path):
    """issue 16: a resumed (or forced) run goes into the folder of its earlier attempt. Its
    submission begins the new attempt: the old record (and its ranks' error files) must not be
    read as the new attempt's outcome by the launcher, the report's reconciliation or collation."""
    run_dir = tmp_path / "sweep" / "0_tiny"
    submission = dict(run_id="sweep/0_tiny", sweep_id="sweep", config={"model": {"name": "tiny"}},
                      axes={"model": "tiny"}, plan={}, scheduler="slurm")
    results.write_record(run_dir, record(status="oom", error="CUDA out of memory"))  # the first attempt
    results.rank_error_file(run_dir, 1).write_text(json.dumps({"status": "oom", "message": "CUDA out of memory",
                                                               "time": 1.0}))
    results.write_submission(run_dir, **submission, job_id=None)  # before the new job starts
    assert not (run_dir / results.RESULT_FILE).exists() and not results.read_rank_errors(run_dir)
    assert results.read_record(run_dir / results.PREVIOUS_RESULT_FILE)["status"] == "oom"  # kept
    results.write_submission(run_dir, **submission, job_id="42_0")  # the same attempt, its job id
    # the new attempt ended without a record: it says so, not the old record's "oom"
    results.write_record_from_submission(run_dir, status="cancelled",
                                         error="Slurm job 42_0 ended CANCELLED without writing a record")
    new = results.read_record(run_dir / results.RESULT_FILE)
    assert (new["status"], new["error"]) == ("cancelled", "Slurm job 42_0 ended CANCELLED without writing a record")
    # a record the new attempt wrote itself is not moved by the submission's second write
    results.write_record(run_dir, record(status="ok"))
    results.write_submission(run_dir, **submission, job_id="42_0")
    assert results.read_record(run_dir / results.RESULT_FILE)["status"] == "ok"


def test_a_sweep_without_a_report_is_ok_only_if_every_run_wrote_an_ok_record(tmp_path):
    from suite.sweep import every_run_ok

    (tmp_path / "0_a").mkdir()
    (tmp_path / "0_a" / "result.json").write_text(json.dumps({"status": "ok"}))
    assert every_run_ok(tmp_path)
    (tmp_path / "1_b").mkdir()
    (tmp_path / "1_b" / "submission.json").write_text("{}")  # submitted, never recorded
    assert not every_run_ok(tmp_path)
    (tmp_path / "1_b" / "result.json").write_text(json.dumps({"status": "ok"}))
    assert every_run_ok(tmp_path)
    (tmp_path / "2_c").mkdir()
    (tmp_path / "2_c" / "result.json").write_text(json.dumps({"status": "invalid"}))  # refused by the plan
    assert not every_run_ok(tmp_path)
