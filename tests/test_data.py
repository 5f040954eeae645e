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
