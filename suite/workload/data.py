"""Token data from disk: a memory-mapped file of token ids read through a DataLoader with
workers (data=tokens), so a sweep shows whether input loading slows training. Samples follow
the same global-batch layout as the synthetic data: step s's global batch is samples
[s*G, (s+1)*G) of the file (wrapping), and each data-parallel replica takes its micro-batches,
so every parallel layout still sees the same samples."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def write_token_file(path: Path, n_tokens: int, vocab_size: int, seed: int = 0,
                     dtype: str = "uint16") -> Path:
    """A file of `n_tokens` random token ids below `vocab_size` (for tests and trials)."""
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab_size, n_tokens, dtype=DTYPES[dtype]).tofile(path)
    return Path(path)


class TokenWindows(Dataset):
    """Sample i = tokens [i*seq_len, i*seq_len + seq_len + 1) of the file (inputs and targets)."""

    def __init__(self, path: str, seq_len: int, vocab_size: int, dtype: str = "uint16") -> None:
        self.path, self.seq_len, self.dtype = path, seq_len, DTYPES[dtype]
        tokens = np.memmap(path, dtype=self.dtype, mode="r")
        self.samples = (len(tokens) - 1) // seq_len
        if self.samples < 1:
            raise ValueError(f"data.path={path} holds {len(tokens)} tokens, fewer than one sample "
                             f"of model.seq_len={seq_len} + 1")
        if int(tokens.max()) >= vocab_size:
            raise ValueError(f"data.path={path} has token ids up to {int(tokens.max())}, not below "
                             f"model.vocab_size={vocab_size}")
        self._tokens = None  # opened per worker process

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        start = index * self.seq_len
        return torch.from_numpy(self._tokens[start:start + self.seq_len + 1].astype(np.int64))


class ReplicaSampler(Sampler):
    """The sample indices replica `dp_rank` reads, micro-batch after micro-batch, for `steps`
    optimizer steps (the synthetic data's layout: micro m of replica r in step s is global rows
    [(m*dp + r)*micro, +micro) of step s's global batch)."""

    def __init__(self, samples: int, steps: int, global_batch: int, micro: int, accum: int,
                 dp_rank: int, dp_size: int) -> None:
        self.indices: List[int] = []
        for step in range(steps):
            for m in range(accum):
                first = step * global_batch + (m * dp_size + dp_rank) * micro
                self.indices += [(first + i) % samples for i in range(micro)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def token_loader(path: str, dtype: str, workers: int, seq_len: int, vocab_size: int, steps: int,
                 global_batch: int, micro: int, accum: int, dp_rank: int, dp_size: int,
                 pin_memory: bool) -> DataLoader:
    dataset = TokenWindows(path, seq_len, vocab_size, dtype)
    sampler = ReplicaSampler(len(dataset), steps, global_batch, micro, accum, dp_rank, dp_size)
    return DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m suite.workload.data",
                                     description="Write a file of random token ids for data=tokens.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="uint16")
    args = parser.parse_args()
    write_token_file(args.path, args.tokens, args.vocab_size, dtype=args.dtype)
    print(f"{args.path}: {args.tokens:,} tokens below {args.vocab_size}")
