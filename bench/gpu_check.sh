#!/usr/bin/env bash
# One prepared, self-checking run for a lent single-GPU machine (written for an NVIDIA H200,
# 141 GB, with Python 3.12 and torch but without DeepSpeed, Hydra or network; it may land on an
# H100 80 GB; the whole script stays under 8 minutes):
#   preflight   python/torch/CUDA/numpy/scipy/dateutil versions, nvidia-smi, the device name (and
#               whether it is the H200 the sizes are chosen for), whether the hostname resolves
#               (the ranks rendezvous at MASTER_ADDR, the hostname), `import deepspeed` with
#               DS_ACCELERATOR=cuda (version and accelerator), NVML's total energy counter;
#   gemm        the GEMM ceiling: bf16/fp32 at 4096, 8192, 16384 (one run);
#   gpt         GPT 1.3B and 2.7B, bf16, AdamW, ZeRO-1 and ZeRO-2 (four points, submit.skip_invalid:
#               what the memory model says does not fit this GPU, 2.7B on an 80 GB H100, is
#               recorded as `invalid` with the reason, and the rest runs);
#   nccl        all_reduce/all_gather/reduce_scatter at 1 MiB, 64 MiB, 512 MiB (world size 1:
#               algbw only);
# all three steps in ONE sweep folder (SWEEP_DIR, outside OUT), each under its own timeout, none
# stopping the next; then the report (python -m suite.report), bench/gpu_summary.py
# ($OUT/summary.txt: the GPU it was written for and ran on, the hostname check, one line per
# run, the refused points with their reasons) and one tarball of the sweep folder, the log and
# the summary ($OUT/gpu-check.tgz). OUT holds only log.txt, summary.txt and gpu-check.tgz: the
# device tool brings back at most 8 files of 16 MiB, at most 2 folders down, so the sweep's many
# files stay out of it; the script checks OUT against those limits at the end.
#
#   bash bench/gpu_check.sh               on the GPU box; installs .whl/*.whl first if .whl exists
#   WHEELS=DIR bash bench/gpu_check.sh    the wheels from DIR (bench/gpu_wheels.sh builds them)
#   bash bench/gpu_check.sh --rehearse    the same script on a CPU machine: tiny model, small sizes,
#                                         no wheels (tests/test_gpu_check.py runs it)
# Environment: PYTHON (interpreter, default python3), OUT (default results/gpu-check),
# SWEEP_DIR (the sweep folder, default results/gpu-check-sweep; not inside OUT; removed at the
# start if an earlier gpu_check.sh made it, refused if something else is in it),
# BUDGET_S (whole-script deadline in seconds; the steps' timeouts shrink to fit it), LIMIT_GEMM,
# LIMIT_GPT, LIMIT_NCCL (each step's timeout in seconds before that; GPU: 60, 300, 60).
#
# Exit status: 0 when the script completed, even if runs failed (summary.txt says which);
# 2 when it could not start (no interpreter, no output folder, a SWEEP_DIR inside OUT or not its
# own), 3 when no summary was written.
set -uo pipefail  # no -e: a failing step or preflight line must not stop the rest

CALLER=$PWD
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
REHEARSE=0
for arg in "$@"; do
  case $arg in
    --rehearse) REHEARSE=1 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (only --rehearse)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/results/gpu-check}
SWEEP=${SWEEP_DIR:-$REPO/results/gpu-check-sweep}
MARK=.gpu_check_sweep  # the sweep folder's mark: only a folder with it is removed
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
case $SWEEP in /*) ;; *) SWEEP=$CALLER/$SWEEP ;; esac
SWEEP=$(realpath -m "$SWEEP")
case $SWEEP/ in "$OUT"/*) echo "gpu_check.sh: SWEEP_DIR $SWEEP is inside OUT $OUT (OUT comes back from the box: keep the sweep out of it)" >&2; exit 2 ;; esac
case $OUT/ in "$SWEEP"/*) echo "gpu_check.sh: OUT $OUT is inside SWEEP_DIR $SWEEP" >&2; exit 2 ;; esac
if [ -e "$SWEEP" ] && [ ! -e "$SWEEP/$MARK" ] && [ -n "$(ls -A "$SWEEP" 2>/dev/null)" ]; then
  echo "gpu_check.sh: $SWEEP exists and was not made by gpu_check.sh (no $MARK); choose another SWEEP_DIR" >&2; exit 2
fi
# A fresh check every time: an earlier sweep folder would be resumed (its ok runs skipped).
rm -rf "$SWEEP" "$OUT/log.txt" "$OUT/summary.txt" "$OUT/gpu-check.tgz"
mkdir -p "$SWEEP" && touch "$SWEEP/$MARK" || { echo "gpu_check.sh: cannot create $SWEEP" >&2; exit 2; }
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
command -v "$PY" >/dev/null && "$PY" -c 'import sys' || { echo "gpu_check.sh: no interpreter $PY"; exit 2; }

# ---- the two modes: everything that differs between the GPU box and the rehearsal ----------
if [ $REHEARSE = 1 ]; then
  MODE="rehearsal (CPU)"
  BUDGET_S=${BUDGET_S:-540}   # tests/test_gpu_check.py waits 600 s
  DS_ACC=cpu
  common=(cluster.accelerator=cpu cluster.cpu_ranks=1 report.enabled=false)
  gemm=('workload.gemm_sizes=[64,128]' 'workload.gemm_dtypes=[bf16,fp32]' workload.iters=20)
  # gpt_2_7b with a declared 4 GB "GPU" (on the CPU it stands for a rank's device memory): a
  # point the memory model refuses, as it refuses 2.7B on an H100; planned, recorded, never started
  gpt=(model=tiny,gpt_2_7b strategy=zero2 precision=bf16 optimizer=adamw train.micro_batch_size=2
       train.warmup_steps=3 train.timed_steps=3 cluster.gpu_memory_gb=4 submit.skip_invalid=true)
  nccl=('workload.message_bytes=[4096,65536]')
  GPT_RUNS=2 LIMITS=(120 240 120) KEEP_NCCL=30  # one GPT run, one refusal: the steps, not the grid, are rehearsed
  WHEELS=${WHEELS:-}          # no wheels unless asked for explicitly
else
  MODE="GPU"
  BUDGET_S=${BUDGET_S:-450}   # 7.5 minutes, install and preflight included
  DS_ACC=cuda
  common=(cluster.accelerator=cuda cluster.gpus_per_node=1 report.enabled=false)
  gemm=('workload.gemm_sizes=[4096,8192,16384]' 'workload.gemm_dtypes=[bf16,fp32]' workload.iters=20)
  # skip_invalid: the memory model reads this GPU's memory (NVML); 2.7B at micro-batch 8 needs
  # ~102 GiB by it: it runs on the H200 and is recorded as refused on an H100 80 GB; 1.3B runs on both
  gpt=(model=gpt_1_3b,gpt_2_7b strategy=zero1,zero2 precision=bf16 optimizer=adamw
       train.micro_batch_size=8 train.warmup_steps=3 train.timed_steps=10 submit.skip_invalid=true)
  nccl=('workload.message_bytes=[1048576,67108864,536870912]')
  GPT_RUNS=4 LIMITS=(60 300 60) KEEP_NCCL=45
  if [ -z "${WHEELS:-}" ] && [ -d "$REPO/.whl" ]; then WHEELS=$REPO/.whl; fi
  WHEELS=${WHEELS:-}
fi
case $WHEELS in ''|/*) ;; *) WHEELS=$CALLER/$WHEELS ;; esac  # relative to where it was started
LIMIT_GEMM=${LIMIT_GEMM:-${LIMITS[0]}} LIMIT_GPT=${LIMIT_GPT:-${LIMITS[1]}} LIMIT_NCCL=${LIMIT_NCCL:-${LIMITS[2]}}
RESERVE_S=45    # kept back for the report (30 s at most), the summary (20 s) and the tarball
KILL_AFTER=10   # timeout -k: SIGKILL this long after SIGTERM
WRITTEN_FOR="NVIDIA H200 (141 GB); on a GPU with less memory what does not fit is refused, not run"
echo "== gpu_check.sh: $MODE, $(date -u +%FT%TZ), host $(hostname), budget ${BUDGET_S} s"
echo "   written for $WRITTEN_FOR"
echo "   out $OUT (log, summary, tarball only), sweep $SWEEP, python $PY"

# ---- 1. wheels --------------------------------------------------------------------------------
if [ -n "$WHEELS" ]; then
  echo "== install: $WHEELS/*.whl -> /tmp/site"
  # --upgrade: a rerun on a warm box replaces what an earlier install left in /tmp/site
  if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade \
       --target /tmp/site "$WHEELS"/*.whl; then echo "   installed $(ls "$WHEELS"/*.whl | wc -l) wheels"
  else echo "   INSTALL FAILED (exit $?); carrying on: the preflight and the runs will say what is missing"
  fi
  export PYTHONPATH=/tmp/site:$REPO
fi

# ---- 2. preflight: every line may fail without stopping the script ----------------------------
echo "== preflight"
timeout 60 "$PY" - <<'EOF' || echo "preflight: python/torch check failed (exit $?)"
import platform
print(f"preflight: python {platform.python_version()} ({platform.machine()})")
try:
    import torch
    print(f"preflight: torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuda available {torch.cuda.is_available()}, devices {torch.cuda.device_count()}")
except Exception as e:
    print(f"preflight: torch FAILED: {type(e).__name__}: {e}")
for mod in ("numpy", "scipy", "dateutil"):  # the box's own, whatever the wheels' pins ask
    try:
        print(f"preflight: {mod} {__import__(mod).__version__}")
    except Exception as e:
        print(f"preflight: {mod} FAILED: {type(e).__name__}: {e}")
else:
    try:
        print(f"preflight: torch.cuda.get_device_name() = {torch.cuda.get_device_name()}")
    except Exception as e:
        print(f"preflight: torch.cuda.get_device_name() FAILED: {type(e).__name__}: {str(e)[:200]}")
EOF
if [ $REHEARSE = 1 ]; then
  echo "preflight: nvidia-smi skipped (rehearsal)"
  DEVICE="no GPU: rehearsal on the CPU ($(nproc) cores)"
else
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
    | sed 's/^/preflight: nvidia-smi: /' || echo "preflight: nvidia-smi FAILED (exit $?)"
  DEVICE=$(timeout 30 nvidia-smi -i 0 --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
  case $DEVICE in
    '') DEVICE="unknown (nvidia-smi gave no name)" ;;
    *H200*) ;;
    *) DEVICE="$DEVICE: NOT the H200 the sizes are chosen for; what its memory cannot hold is refused (listed below)" ;;
  esac
  echo "preflight: GPU $DEVICE"
fi
# The ranks rendezvous at MASTER_ADDR, which is this machine's hostname: it must resolve.
HOST_CHECK=$(timeout 20 "$PY" -c '
import socket
name = socket.gethostname()
try:
    addrs = sorted({a[4][0] for a in socket.getaddrinfo(name, None)})
    print(f"{name} resolves to {chr(44).join(addrs)} (MASTER_ADDR, where the ranks rendezvous)")
except OSError as e:
    print(f"{name} does NOT resolve ({e}): the ranks rendezvous at MASTER_ADDR={name} and cannot "
          f"reach it (add 127.0.0.1 {name} to /etc/hosts)")
' 2>&1) || HOST_CHECK="$(hostname): resolution check FAILED (exit $?): ${HOST_CHECK:-no output}"
echo "preflight: hostname $HOST_CHECK"
DS_ACCELERATOR=$DS_ACC timeout 90 "$PY" -c '
import deepspeed
from deepspeed.accelerator import get_accelerator
print(f"preflight: deepspeed {deepspeed.__version__}, accelerator {get_accelerator().device_name()}")
' || echo "preflight: import deepspeed FAILED (exit $?)"
timeout 30 "$PY" - <<'EOF' || echo "preflight: pynvml check failed (exit $?)"
try:
    import pynvml
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    print(f"preflight: NVML total energy counter readable: {pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)} mJ")
except Exception as e:
    print(f"preflight: NVML total energy counter NOT readable: {type(e).__name__}: {e}")
EOF

# ---- 3. the steps: one sweep folder, each under its own timeout, none stopping the next -------
STEPS=()   # name=rc:seconds:limit, for the summary
STEP_PGID=
cleanup_leftovers() {  # a timed-out step's ranks must not hold the GPU for the next step
  [ -n "$STEP_PGID" ] && kill -KILL -- "-$STEP_PGID" 2>/dev/null
  STEP_PGID=
  # Processes that left the step's process group: theirs is the only command line naming $SWEEP.
  pkill -KILL -f -- "$(printf '%s' "$SWEEP" | sed 's/[][\.*^$+?(){}|]/\\&/g')" 2>/dev/null
  return 0
}
trap cleanup_leftovers EXIT
trap 'exit 143' TERM INT HUP  # killed from outside: the EXIT trap still cleans up
step() {  # step NAME NOMINAL_LIMIT_S KEEP_S WORKLOAD [overrides...]; KEEP_S: kept for later steps
  local name=$1 nominal=$2 keep=$3 workload=$4; shift 4
  local left=$(( BUDGET_S - SECONDS - RESERVE_S - KILL_AFTER - keep ))
  local limit=$(( nominal < left ? nominal : left ))
  if [ "$limit" -lt 15 ]; then
    echo "== step $name: SKIPPED, $(( BUDGET_S - SECONDS )) s left of the ${BUDGET_S} s budget"
    STEPS+=("$name=skipped:0:0"); return
  fi
  echo "== step $name ($workload, timeout ${limit} s): $*"
  local started=$SECONDS rc
  # timeout leads its own process group: on expiry it signals the whole group (the sweep, the
  # submitit job and its ranks); afterwards whatever is left of the group is killed by its id.
  timeout -k $KILL_AFTER "$limit" "$PY" -m suite.sweep -m workload="$workload" "$@" "${common[@]}" \
    "hydra.sweep.dir=$SWEEP" "hydra.sweep.subdir=${name}_\${hydra.job.num}_\${model.name}_\${strategy.name}" \
    </dev/null &
  STEP_PGID=$!
  wait "$STEP_PGID"; rc=$?
  cleanup_leftovers
  local took=$(( SECONDS - started ))
  case $rc in
    0) echo "== step $name: exit 0 after ${took} s" ;;
    124|137) echo "== step $name: TIMED OUT after ${took} s (exit $rc, limit ${limit} s)" ;;
    *) echo "== step $name: exit $rc after ${took} s" ;;
  esac
  if [ $rc != 0 ]; then  # runs it started but that left no record: a record says so, not a gap
    local status=error; case $rc in 124|137) status=timeout ;; esac
    "$PY" bench/gpu_summary.py --close "$SWEEP" --status $status \
      --why "gpu_check.sh step $name ended with exit $rc after ${took} s (timeout ${limit} s) before the run wrote its record"
  fi
  if [ $REHEARSE = 0 ]; then
    timeout 15 nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader \
      | sed 's/^/   still on the GPU: /'
  fi
  STEPS+=("$name=$rc:$took:$limit")
}
step gemm $LIMIT_GEMM $KEEP_NCCL gemm "${gemm[@]}"
step gpt $LIMIT_GPT $KEEP_NCCL train "${gpt[@]}"
step nccl $LIMIT_NCCL 0 allreduce "${nccl[@]}"

# ---- 4. report, summary, tarball ---------------------------------------------------------------
echo "== report"
if [ -d "$SWEEP" ]; then
  timeout -k 5 30 "$PY" -m suite.report "$SWEEP"
  echo "   report exit ${PIPESTATUS[0]} (1 = some run failed)"
else
  echo "   no sweep folder: no step started a run"
fi
echo "== summary"
step_args=(); for s in "${STEPS[@]}"; do step_args+=(--step "$s"); done
timeout -k 5 20 "$PY" bench/gpu_summary.py "$SWEEP" --out "$OUT/summary.txt" \
  --expect gemm=1 --expect gpt=$GPT_RUNS --expect nccl=1 "${step_args[@]}" --wall $SECONDS \
  --written-for "$WRITTEN_FOR" --device "$DEVICE" --host "$HOST_CHECK" \
  || echo "   gpu_summary.py FAILED (exit $?)"
echo "== packing $OUT/gpu-check.tgz (wall ${SECONDS} s so far)"
TAR_MAX=$(( 15 * 2**20 ))  # the device tool brings back files of 16 MiB at most
MEMBERS=$(mktemp /tmp/gpu_check_members.XXXXXX)
pack() {  # pack [find-args...]: the log, the summary and the sweep folder as sweep/ (its files filtered)
  sleep 1  # let tee catch up, so the log in the tarball is complete
  ( cd "$SWEEP" && find . -type f ! -name "$MARK" "$@" -print0 ) > "$MEMBERS"
  tar -czf "$OUT/gpu-check.tgz" -C "$OUT" --ignore-failed-read log.txt summary.txt \
    -C "$SWEEP" --transform 's,^\.,sweep,S' --null -T "$MEMBERS" 2>&1 | grep -v "Cannot stat" || true
}
pack
if [ "$(stat -c %s "$OUT/gpu-check.tgz" 2>/dev/null || echo 0)" -gt $TAR_MAX ]; then
  echo "   over 15 MiB: packed again without the sweep's files of 1 MiB or more:"
  ( cd "$SWEEP" && find . -type f -size +1023k -printf '     left out %P (%s bytes)\n' )
  pack -size -1024k
fi
rm -f "$MEMBERS"
ls -l "$OUT/gpu-check.tgz" 2>/dev/null | awk '{print "   " $5 " bytes"}'
# What comes back from the box: at most 8 files of 16 MiB (64 MiB in all), at most 2 folders
# down, names of letters, digits, '.', '_', '-'. Anything else in OUT is lost: say so here.
"$PY" - "$OUT" <<'EOF' || echo "   OUT check FAILED (exit $?)"
import os, re, sys
out, bad, n, total = sys.argv[1], [], 0, 0
for top, dirs, files in os.walk(out):
    for f in files:
        path = os.path.join(top, f); rel = os.path.relpath(path, out); size = os.path.getsize(path)
        n += 1; total += size
        if size > 16 * 2**20: bad.append(f"{rel} is {size / 2**20:.1f} MiB (over 16 MiB)")
        if rel.count(os.sep) > 2: bad.append(f"{rel} is more than 2 folders down")
        if not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.split(os.sep)):
            bad.append(f"{rel}: a name outside [A-Za-z0-9._-]")
if n > 8: bad.append(f"{n} files (over 8)")
if total > 64 * 2**20: bad.append(f"{total / 2**20:.1f} MiB in all (over 64 MiB)")
print(f"   OUT: {n} files, {total / 2**20:.2f} MiB: " + ("all of it comes back from the box" if not bad
      else "NOT ALL OF IT COMES BACK: " + "; ".join(bad)))
EOF
echo "== done in ${SECONDS} s"
[ -s "$OUT/summary.txt" ] || exit 3
exit 0
