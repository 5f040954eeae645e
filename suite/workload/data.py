"""The batches a run trains on. Synthetic: random token ids made on the device from the seed.
Tokens (data=tokens): a file of token ids, local or at an fsspec URL (suite.workload.tokens),
read through a DataLoader with workers, so a sweep shows whether input loading slows
training. Samples follow the same global-batch layout as the synthetic data: step s's global batch is samples
[s*G, (s+1)*G) of the file (wrapping), and each data-parallel replica takes its micro-batches,
so every parallel layout still sees the same samples."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from suite.workload.tokens import DTYPES, TokenSource


def global_batches(n: int, global_batch: int, seq_len: int, vocab_size: int, seed: int,
                   device: torch.device | str) -> List[torch.Tensor]:
    """`n` global batches of uniformly random tokens, made on the device from `seed`; every rank
    makes the same ones and takes its share (`micro_batch`), so every layout sees the same data."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.randint(0, vocab_size, (global_batch, seq_len + 1), generator=generator,
                          device=device) for _ in range(n)]


def sequence_slice(batch: torch.Tensor, sp_rank: int, sp_size: int) -> torch.Tensor:
    """Sequence-parallel rank `sp_rank`'s slice of (batch, seq_len + 1) tokens: its seq_len/sp
    inputs and, overlapping the next slice by one token, their targets."""
    length = (batch.shape[1] - 1) // sp_size
    return batch[:, sp_rank * length:(sp_rank + 1) * length + 1]


def micro_batch(batch: torch.Tensor, micro: int, dp_rank: int, dp_size: int,
                micro_size: int) -> torch.Tensor:
    """Data-parallel replica `dp_rank`'s micro-batch number `micro` of a global batch."""
    start = (micro * dp_size + dp_rank) * micro_size
    return batch[start:start + micro_size]


def write_token_file(path: Path, n_tokens: int, vocab_size: int, seed: int = 0,
                     dtype: str = "uint16") -> Path:
    """A file of `n_tokens` random token ids below `vocab_size` (for tests and trials)."""
    rng = np.random.default_rng(seed)
    rng.integers(0, vocab_size, n_tokens, dtype=DTYPES[dtype]).tofile(path)
    return Path(path)


class TokenWindows(Dataset):
    """Sample i = tokens [i*seq_len, i*seq_len + seq_len + 1) of the file (inputs and targets);
    `path` is a local path or an fsspec URL (suite.workload.tokens)."""

    def __init__(self, path: str, seq_len: int, vocab_size: int, dtype: str = "uint16") -> None:
        self.source, self.seq_len, self.vocab_size = TokenSource(path, dtype), seq_len, vocab_size
        self.samples = (self.source.n_tokens - 1) // seq_len
        if self.samples < 1:
            raise ValueError(f"data.path={path} holds {self.source.n_tokens} tokens, fewer than one "
                             f"sample of model.seq_len={seq_len} + 1")
        largest = self.source.max_token()
        if largest is not None and largest >= vocab_size:
            raise ValueError(f"data.path={path} has token ids up to {largest}, not below "
                             f"model.vocab_size={vocab_size}")

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> torch.Tensor:
        tokens = self.source.read(index * self.seq_len, self.seq_len + 1)
        if not self.source.local and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"data.path={self.source.url} has token id {int(tokens.max())} in sample "
                             f"{index}, not below model.vocab_size={self.vocab_size}")
        return torch.from_numpy(tokens)


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
