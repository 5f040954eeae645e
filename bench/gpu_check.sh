#!/usr/bin/env bash
# One prepared check for a single-GPU machine (written for a lent H200 with torch but without
# DeepSpeed; fits in 8 minutes): the GEMM ceiling, the all_reduce micro-benchmark (world size 1),
# and the GPT workload at bf16 for 1.3B and 2.7B with ZeRO-1 and ZeRO-2; prints MFU and tokens/s.
#
#   bash bench/gpu_check.sh            on any GPU box with the suite installed (make install)
#   WHEELS=.whl bash bench/gpu_check.sh   installs the suite's dependencies from wheels first
#
# Wheels for a Python 3.12 x86-64 box, made where pip works (deepspeed's is built locally):
#   pip wheel --no-deps -w .whl deepspeed hydra-core omegaconf antlr4-python3-runtime==4.9.3 \
#       submitit hydra-submitit-launcher tabulate
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/results/gpu-check}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PYTHON:-python3}
export SUITE_RESULTS_DIR=$OUT PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
common=(cluster.gpus_per_node=1 cluster.accelerator=cuda report.enabled=true)
# 1. the ceiling: bf16/fp32 GEMMs of a few large shapes
timeout 120 $PY -m suite.sweep -m workload=gemm 'workload.gemm_sizes=[4096,8192,16384]' \
  'workload.gemm_dtypes=[bf16,fp32]' workload.iters=20 "${common[@]}" | tail -n 20
# 2. collective bandwidth (world size 1: algbw only, busbw is 0 by definition)
timeout 90 $PY -m suite.sweep -m workload=allreduce 'workload.message_bytes=[1048576,67108864,536870912]' \
  "${common[@]}" | tail -n 5
# 3. the GPT workload: bf16, fused AdamW, 1.3B and 2.7B, ZeRO-1 and ZeRO-2
timeout 300 $PY -m suite.sweep -m model=gpt_1_3b,gpt_2_7b strategy=zero1,zero2 precision=bf16 \
  optimizer=adamw train.micro_batch_size=8 train.warmup_steps=3 train.timed_steps=10 \
  "${common[@]}" | tail -n 30
grep -h -A12 "### gpt" "$OUT"/*/report/report.md | cut -c1-220 || true
