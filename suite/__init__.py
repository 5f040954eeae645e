"""A benchmarking suite for DeepSpeed training on Slurm GPU clusters (and on one machine)."""
