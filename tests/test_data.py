"""Token files where users keep them (suite/workload/tokens.py): a local path, a file:// URL and
an fsspec filesystem (memory://, in this process and its DataLoader workers) give the same
samples through the same DataLoader path; an unreadable data.path is named before submission."""
import fsspec
import numpy as np
import pytest

from suite.workload.data import token_loader, write_token_file
from suite.workload.tokens import TokenSource, source_problem

SEQ, VOCAB = 16, 512


def _batches(url: str, workers: int) -> list:
    # 3 steps of a global batch of 4, micro-batch 2, 2 replicas: replica 1's micro-batches
    loader = token_loader(url, "uint16", workers, SEQ, VOCAB, steps=3, global_batch=4, micro=2,
                          accum=1, dp_rank=1, dp_size=2, pin_memory=False)
    return [b.numpy() for b in loader]


def test_local_path_file_url_and_an_fsspec_filesystem_read_the_same_samples(tmp_path):
    path = write_token_file(tmp_path / "tokens.bin", 1_000, VOCAB, seed=3)
    with fsspec.open("memory://bucket/tokens.bin", "wb") as f:
        f.write(path.read_bytes())
    ids = np.fromfile(path, dtype=np.uint16).astype(np.int64)

    local = _batches(str(path), workers=1)
    # step s, replica 1 reads global rows [4s + 2, 4s + 4): samples 2, 3 then 6, 7 then 10, 11
    assert np.array_equal(local[0][1], ids[3 * SEQ:4 * SEQ + 1])
    assert np.array_equal(local[2][0], ids[10 * SEQ:11 * SEQ + 1])
    for url in (f"file://{path}", "memory://bucket/tokens.bin"):
        for workers in (0, 1):
            got = _batches(url, workers)
            assert all(np.array_equal(a, b) for a, b in zip(got, local)) and len(got) == 3, (url, workers)
    assert TokenSource(str(path)).local and not TokenSource("memory://bucket/tokens.bin").local


def test_a_remote_sample_beyond_the_vocabulary_is_named_when_read():
    with fsspec.open("memory://bucket/wide.bin", "wb") as f:
        f.write(np.full(100, 60_000, dtype=np.uint16).tobytes())
    with pytest.raises(ValueError, match="data.path=memory://bucket/wide.bin has token id 60000"):
        _batches("memory://bucket/wide.bin", workers=0)


def test_a_missing_file_or_an_unknown_scheme_is_named(tmp_path):
    assert source_problem(str(tmp_path / "absent.bin")) == f"data.path={tmp_path / 'absent.bin'}: no such file"
    assert source_problem("memory://bucket/absent.bin") == "data.path=memory://bucket/absent.bin: no such file"
    assert source_problem("nosuch://bucket/t.bin").startswith("data.path=nosuch://bucket/t.bin: ")
    assert "nosuch" in source_problem("nosuch://bucket/t.bin")
    path = write_token_file(tmp_path / "t.bin", 100, VOCAB)
    assert source_problem(str(path)) is None and source_problem(f"file://{path}") is None


# --- planning's check of data.path (suite.plan.token_file_samples): a stat, nothing read ------

def test_a_file_shorter_than_one_sample_is_refused_at_planning_local_or_remote(tmp_path):
    from suite.plan import token_file_samples

    short = write_token_file(tmp_path / "short.bin", SEQ, VOCAB)  # SEQ tokens: one short of a sample
    with fsspec.open("memory://bucket/short.bin", "wb") as f:
        f.write(short.read_bytes())
    for url in (str(short), f"file://{short}", "memory://bucket/short.bin"):
        problem, samples = token_file_samples(url, "uint16", SEQ)
        assert problem == (f"data.path={url} holds 16 tokens (32 bytes of data.token_dtype=uint16, 2 bytes "
                           f"each), fewer than one sample of model.seq_len=16 + 1 = 17 tokens; write a longer "
                           "file (python -m suite.workload.data FILE --tokens N) or lower model.seq_len"), url
    # the token width counts: 34 bytes are 17 uint16 tokens (one sample), 8 uint32 tokens (none)
    exact = write_token_file(tmp_path / "exact.bin", SEQ + 1, VOCAB)
    assert token_file_samples(str(exact), "uint16", SEQ) == (None, 1)
    assert "holds 8 tokens (34 bytes of data.token_dtype=uint32" in token_file_samples(str(exact), "uint32", SEQ)[0]
    assert token_file_samples(str(write_token_file(tmp_path / "long.bin", 1_000, VOCAB)), "uint16", SEQ) == (None, 62)
    assert token_file_samples(str(tmp_path / "absent.bin"), "uint16", SEQ)[0] == \
        f"data.path={tmp_path / 'absent.bin'}: no such file"
    assert "Protocol not known" in token_file_samples("nosuch://bucket/t.bin", "uint16", SEQ)[0]


def test_the_plan_refuses_a_short_token_file_naming_data_path(tmp_path):
    from suite.config import ConfigError, DataConfig, ModelConfig, SuiteConfig
    from suite.plan import check_data

    short = write_token_file(tmp_path / "short.bin", 64, VOCAB)
    cfg = SuiteConfig(model=ModelConfig(seq_len=64), data=DataConfig(name="tokens", path=str(short)))
    with pytest.raises(ConfigError, match=f"data.path={short} holds 64 tokens .* model.seq_len=64 "):
        check_data(cfg)
    assert check_data(SuiteConfig(model=ModelConfig(seq_len=63), data=DataConfig(name="tokens", path=str(short)))) == 1
    assert check_data(SuiteConfig()) is None  # synthetic data: nothing to read


class _BrokenFileSystem(fsspec.AbstractFileSystem):
    """A filesystem that is installed but cannot open here (as pyarrow's HDFS without a JVM)."""
    protocol = "brokenfs"

    def __init__(self, *args, **kwargs):
        raise RuntimeError("the client library could not load\nline two of its complaint")


class _NoStatFileSystem(fsspec.AbstractFileSystem):
    """One that opens, then cannot stat the path (credentials, network)."""
    protocol = "nostatfs"

    def info(self, path, **kwargs):
        raise PermissionError("403 Forbidden")


def test_any_exception_opening_the_filesystem_or_stating_the_path_is_a_refusal(capfd):
    from suite.plan import token_file_samples

    fsspec.register_implementation("brokenfs", _BrokenFileSystem, clobber=True)
    fsspec.register_implementation("nostatfs", _NoStatFileSystem, clobber=True)
    problem, _ = token_file_samples("brokenfs://store/tokens.bin", "uint16", SEQ)
    assert problem.startswith("data.path=brokenfs://store/tokens.bin: the 'brokenfs' filesystem could not be "
                              "opened: RuntimeError: the client library could not load (+1 more lines not shown); "
                              "provide what fsspec's 'brokenfs' filesystem needs here"), problem
    problem, _ = token_file_samples("nostatfs://store/tokens.bin", "uint16", SEQ)
    assert problem.startswith("data.path=nostatfs://store/tokens.bin: the 'nostatfs' filesystem could not stat "
                              "it: PermissionError: 403 Forbidden; "), problem


def test_hdfs_without_a_jvm_is_refused_with_what_is_missing_and_how_to_provide_it(capfd):
    """pyarrow installed, no JVM or libhdfs on this machine: pyarrow raises OSError 'Unable to load
    libjvm' (its message and stderr list ~100 places it looked); the refusal is one line."""
    pytest.importorskip("pyarrow")
    from suite.plan import token_file_samples

    capfd.readouterr()
    url = "hdfs://namenode:8020/data/tokens.bin"
    problem, _ = token_file_samples(url, "uint16", SEQ)
    if "libjvm" not in problem and "libhdfs" not in problem:  # a JVM and libhdfs load here
        pytest.skip(f"libhdfs loads on this machine: {problem}")
    # the first attempt in a process says "Unable to load libjvm", a later one "Prior attempt to
    # load libhdfs failed"
    assert problem.startswith(f"data.path={url}: the 'hdfs' filesystem could not be opened: OSError: "), problem
    assert "JAVA_HOME" in problem and "HADOOP_HOME" in problem and "hadoop classpath --glob" in problem
    assert problem.count("\n") == 0 and "dlopen" not in capfd.readouterr().err  # pyarrow's stderr held back
