#!/bin/bash

# Parameters
#SBATCH --account=ml-infra
#SBATCH --array=0-3%4
#SBATCH --constraint=h100
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --gpus-per-node=8
#SBATCH --job-name=suite
#SBATCH --mem=1000GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --open-mode=append
#SBATCH --output=/shared/sweeps/nightly/.submitit/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu-h100
#SBATCH --qos=normal
#SBATCH --reservation=nightly-bench
#SBATCH --signal=USR2@60
#SBATCH --time=30
#SBATCH --wckey=submitit

# setup
module load cuda/12.4 nccl/2.21
source $HOME/venvs/suite/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /shared/sweeps/nightly/.submitit/%A_%a/%A_%a_%t_log.out --cpus-per-task 12 python3 -u -m submitit.core._submit /shared/sweeps/nightly/.submitit/%j
