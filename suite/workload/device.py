"""The one place where a rank meets its device: the accelerator DeepSpeed picks, which GPU a
rank uses, whether the hardware is what the plan said, and the DeepSpeed ops it must compile.
Every other module asks here, so that every accelerator call the suite makes is in one file
(tests check each exists on DeepSpeed's CUDA accelerator, which this CPU machine cannot run)."""
from __future__ import annotations

import os
import shutil
from typing import Any, Collection, List, Optional, Sequence, Tuple


class HardwareMismatch(RuntimeError):
    """The rank is on other hardware than the plan was made for."""


def accelerator_environment(accelerator: str) -> dict:
    """Variables set before `import deepspeed`, which picks its accelerator on import: the plan's
    choice, never an inherited DS_ACCELERATOR (a stray `cpu` would train on the CPU while MFU is
    computed against the GPU's peak)."""
    return {"DS_ACCELERATOR": accelerator}


def extensions_environment(environ: dict, prefix: str, writable: bool) -> dict:
    """Where DeepSpeed's just-in-time ops are built and cached: the user's TORCH_EXTENSIONS_DIR
    if set, else a folder inside this Python environment (`prefix`) when it is writable.
    torch's default, ~/.cache/torch_extensions, is one folder per op name for every environment:
    two environments (two checkouts, a nightly and a dev venv) write different build files into
    it, and each run then rebuilds the op (25-60 s on the CPU) under a file lock
    (docs/behaviour.md)."""
    out = {}
    if not environ.get("TORCH_EXTENSIONS_DIR") and writable:
        out["TORCH_EXTENSIONS_DIR"] = os.path.join(prefix, "torch_extensions")
    # torch builds with the first `ninja` on PATH; two ninjas (pip's in the environment, the
    # system's) keep rebuilding each other's builds (their logs' command hashes differ): the
    # environment's own comes first, whether or not the environment was activated
    bin_dir, path = os.path.join(prefix, "bin"), environ.get("PATH", "")
    if os.path.exists(os.path.join(bin_dir, "ninja")) and path.split(os.pathsep)[0] != bin_dir:
        out["PATH"] = bin_dir + (os.pathsep + path if path else "")
    return out


# torch builds and loads a just-in-time op under a lock file in its build folder (FileBaton),
# taken on every load while ninja checks the build is up to date. A rank killed while holding
# it (scancel, a time limit, preemption, the OOM killer) leaves the file behind, and every later
# run that loads the op waits on it forever: seen on the local cluster, where each such run then
# ended as "not every rank arrived within cluster.init_timeout_s". A lock older than any build
# takes is stale.
STALE_LOCK_S = 600.0


def clear_stale_build_locks(extensions_dir: Optional[str], now: float,
                            older_than_s: float = STALE_LOCK_S) -> List[str]:
    """Remove the `lock` files of just-in-time op builds under `extensions_dir` (torch's
    TORCH_EXTENSIONS_DIR) last touched more than `older_than_s` ago; returns the ones removed."""
    removed = []
    if not extensions_dir or not os.path.isdir(extensions_dir):
        return removed
    for root, _, files in os.walk(extensions_dir):
        if "lock" not in files:
            continue
        path = os.path.join(root, "lock")
        try:
            if now - os.path.getmtime(path) > older_than_s:
                os.remove(path)
                removed.append(path)
        except OSError:  # another rank removed it first, or it is not ours to remove
            pass
    return removed


def ask_for_the_cpu_once() -> bool:
    """Make py-cpuinfo's get_cpu_info answer from memory after its first call in this process.

    DeepSpeed's CPU op builders (CPUAdam and CPUAdagrad under ZeRO-Offload, FusedAdam on the
    CPU accelerator) ask it twice for every op they load (cpu_arch and simd_width, for the build
    flags), in every process, even when the op is built already; each call starts a Python
    interpreter that reads CPUID and measures the clock: 1.2 s of CPU on this project's 2-core
    machine. So a GPU rank under ZeRO-Offload with DeepSpeed's CPUAdam spent 2.4 s of its start
    there, and 1.2 s with this (bench/op_load.py). The processor cannot change within a process,
    so the first answer stands. py-cpuinfo keeps no cache of its own: this replaces its public
    function with a memoised one, here only. Returns False where py-cpuinfo is absent."""
    import functools

    try:
        import cpuinfo
    except ImportError:
        return False
    if not hasattr(cpuinfo.get_cpu_info, "cache_info"):
        cpuinfo.get_cpu_info = functools.lru_cache(maxsize=1)(cpuinfo.get_cpu_info)
    return True


def threads_per_rank(local_world_size: int, slurm_cpus_per_task: Optional[str],
                     cpu_count: Optional[int]) -> int:
    """Intra-op threads of one rank: the cores Slurm gave the task, else this machine's cores
    shared among its ranks (more threads than cores ran steps 3-4x slower on the CPU)."""
    if slurm_cpus_per_task:
        return max(1, int(slurm_cpus_per_task))
    return max(1, (cpu_count or 1) // max(1, local_world_size))


#: how a rank chose its GPU (the record's env.gpu_binding)
BIND_LOCAL_RANK = "local rank"
BIND_ONLY_DEVICE = "one visible device per task"


def gpu_binding(accelerator: str, local_rank: int, visible_gpus: int) -> Tuple[Optional[int], Optional[str]]:
    """Which of the visible GPUs this rank uses, and why: (index, binding). A node that shows
    every rank all its GPUs: GPU `local_rank` (BIND_LOCAL_RANK). A site that binds one GPU per
    task (`--gpus-per-task=1`, `--gpu-bind`) leaves each rank exactly one visible device, its
    own, whatever its local rank: cuda:0 (BIND_ONLY_DEVICE). (None, None) on the CPU."""
    if accelerator != "cuda":
        return None, None
    if visible_gpus == 1:
        return 0, BIND_ONLY_DEVICE
    return local_rank, BIND_LOCAL_RANK


def set_fp32_matmul_precision(tf32: bool) -> str:
    """Say how fp32 matmuls and convolutions run, in every run (precision.tf32): IEEE fp32
    ("highest"), or TF32 where asked ("high"). Site images (NGC) and sitecustomize files may
    allow TF32 before the suite starts; an fp32 GEMM ceiling or fp32 MFU measured with it
    would be set against the fp32 peak. torch's legacy setters first; then cuDNN's
    convolution and RNN settings where torch's newer per-backend API set them (they outrank
    cudnn.allow_tf32, and reading it raises while they disagree). Returns
    torch.get_float32_matmul_precision(). NVIDIA_TF32_OVERRIDE=0 still forbids TF32 beneath
    torch; the record carries it."""
    import torch

    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    wanted = "tf32" if tf32 else "ieee"
    for backend in (getattr(torch.backends.cudnn, "conv", None), getattr(torch.backends.cudnn, "rnn", None)):
        if backend is not None and getattr(backend, "fp32_precision", "none") not in ("none", wanted):
            backend.fp32_precision = wanted
    return torch.get_float32_matmul_precision()


def check_hardware(accelerator: str, deepspeed_accelerator: str, local_rank: int,
                   visible_gpus: int) -> None:
    """Refuse to measure anything on other hardware than planned."""
    if deepspeed_accelerator != accelerator:
        raise HardwareMismatch(
            f"DeepSpeed chose the {deepspeed_accelerator!r} accelerator but the run was planned for "
            f"{accelerator!r} (is DS_ACCELERATOR set, or deepspeed imported before the rank set it?)")
    # one visible GPU is this task's own (a site binding a GPU per task); several visible but
    # fewer than the local ranks is a node or a CUDA_VISIBLE_DEVICES narrower than the plan
    if accelerator == "cuda" and (visible_gpus < 1 or (visible_gpus > 1 and local_rank >= visible_gpus)):
        raise HardwareMismatch(
            f"the run was planned for cuda with a GPU per rank, but local rank {local_rank} sees "
            f"{visible_gpus} GPU(s) on this node (cluster.gpus_per_node larger than the node's "
            "GPUs, or CUDA_VISIBLE_DEVICES narrower than the allocation)")


#: the base class of DeepSpeed's op builders that compile with nvcc (CUDAExtension); the
#: others (OpBuilder, the CPU builders' CPUOpBuilder) compile C++ with the host compiler alone
CUDA_BUILDER = "CUDAOpBuilder"


def op_builder_class(op_name: str, accelerator: Any = None) -> Optional[type]:
    """DeepSpeed's builder class for the op named `op_name` (its NAME, the key of
    installed_ops) on `accelerator` (default: the one DeepSpeed chose), asked of the
    accelerator itself (get_op_builder), which knows, for one, that the CUDA accelerator builds
    CPU-Adam with the CPU builder. None where it has none."""
    import deepspeed.ops.op_builder as op_builder

    if accelerator is None:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
    # deepspeed.ops.op_builder names every builder class of every backend
    for class_name in sorted(n for n in dir(op_builder) if n.endswith("Builder")):
        if class_name in ("OpBuilder", CUDA_BUILDER):
            continue
        builder = accelerator.get_op_builder(class_name)
        if isinstance(builder, type) and getattr(builder, "NAME", None) == op_name:
            return builder
    return None


def needs_nvcc(op_name: str, accelerator: Any = None) -> bool:
    """Whether DeepSpeed builds the op with nvcc (a CUDAOpBuilder). An op whose builder the
    accelerator does not know is taken to need it (as every GPU op did before)."""
    builder = op_builder_class(op_name, accelerator)
    return builder is None or any(c.__name__ == CUDA_BUILDER for c in builder.__mro__)


def missing_ops(needed: Sequence[Tuple[str, str]], installed: dict, cuda_ops: Collection[str],
                nvcc: bool, cxx: bool) -> List[Tuple[str, str, str]]:
    """The ops of `needed` (name, field) that are neither prebuilt nor buildable here, each with
    what its build lacks: an op in `cuda_ops` needs nvcc and the host C++ compiler (`nvcc`,
    `cxx`: whether each is there), any other the host compiler alone."""
    out = []
    for name, field in needed:
        if installed.get(name, False):
            continue
        lacking = [tool for tool, there in (("nvcc", nvcc or name not in cuda_ops), ("a C++ compiler", cxx))
                   if not there]
        if lacking:
            out.append((name, field, " and ".join(lacking)))
    return out


def host_compiler() -> Tuple[str, Optional[str]]:
    """The C++ compiler torch builds extensions with (CXX, else `c++`) and its path, None where
    it is not on PATH."""
    try:
        from torch.utils.cpp_extension import get_cxx_compiler

        name = get_cxx_compiler()
    except ImportError:  # an older torch: the same rule
        name = os.environ.get("CXX", "c++")
    return name, shutil.which(name)


def check_compiled_ops(needed: Sequence[Tuple[str, str]], accelerator: str) -> None:
    """On GPUs, fail before training when an op the run needs can be neither loaded nor built
    (DeepSpeed would stop half-way through initialisation with 'CUDA_HOME is not set'). Only the
    ops a CUDA builder makes need nvcc; CPU-Adam and CPU-Adagrad (ZeRO-Offload) are C++ built by
    the host compiler, which every op that is not prebuilt needs."""
    if accelerator != "cuda" or not needed:
        return
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import CUDA_HOME

    to_build = [name for name, _ in needed if not installed_ops.get(name, False)]
    if not to_build:
        return
    nvcc = CUDA_HOME is not None and shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is not None
    cxx_name, cxx = host_compiler()
    missing = missing_ops(needed, installed_ops, {name for name in to_build if needs_nvcc(name)},
                          nvcc, cxx is not None)
    if missing:
        asked = "; ".join(f"{name} (asked for by {field}; needs {lacking})" for name, field, lacking in missing)
        raise RuntimeError(
            f"DeepSpeed ops not prebuilt and not compilable on this node (nvcc under CUDA_HOME="
            f"{CUDA_HOME}: {'found' if nvcc else 'none'}; C++ compiler {cxx_name!r}: "
            f"{cxx or 'not on PATH'}): {asked}. Install DeepSpeed with those ops prebuilt (DS_BUILD_OPS=1 "
            "or DS_BUILD_<OP>=1 where the CUDA toolkit is), make nvcc or a C++ compiler (CXX) "
            "available, or choose another optimizer/strategy (optimizer.implementation=auto needs "
            "no build)")


def select_device(accelerator: str, local_rank: int, visible_gpus: int) -> str:
    """Bind this rank to its node-local GPU before the process group starts (NCCL binds a
    communicator to the current device: with every rank on cuda:0, eight local ranks fail or
    measure one GPU); with one visible device per task (gpu_binding), that device. DeepSpeed
    binds by LOCAL_RANK itself (init_process_group's device_id, the engine, zero.Init), so
    LOCAL_RANK is set to the index bound. Returns the device name the rank uses."""
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accelerator == "cuda":
        index, _ = gpu_binding(accelerator, local_rank, visible_gpus)
        accel.set_device(index)
        os.environ["LOCAL_RANK"] = str(index)
    return accel.current_device_name()


def current_device() -> str:
    """'cuda:<local rank>' once select_device ran, or 'cpu'."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().current_device_name()


def synchronize() -> None:
    """Wait for the device's queued work (every timed region is bracketed by this)."""
    from deepspeed.accelerator import get_accelerator

    get_accelerator().synchronize()


def deepspeed_accelerator() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def device_name(accelerator: str) -> Optional[str]:
    """The GPU's name as the peak table knows it ('NVIDIA H100 80GB HBM3'). DeepSpeed's CUDA
    accelerator has no get_device_name(); torch's is the one every GPU build has. None on the
    CPU (the CPU's name is in the record's environment)."""
    if accelerator != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()
