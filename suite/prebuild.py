"""Build the DeepSpeed just-in-time ops that runs on this machine load, before the first run:
`python -m suite.prebuild [ACCELERATOR]` (default cpu).

Otherwise the first run pays the build (about a minute on 2 CPU cores) inside its wall time,
and a search or a comparison that measures run-seconds charges it to whichever run came first.
The ops go where the ranks look for them (`device.extensions_environment`). On the CPU that is
the shared-memory collectives op DeepSpeed loads in `init_distributed`. DeepSpeed's CUDA ops
(fused Adam and others) need the GPU node's compiler and architecture: build them there, at
install (`DS_BUILD_OPS=1 pip install deepspeed`) or by a first run (docs/behaviour.md)."""
from __future__ import annotations

import os
import sys
import time

from suite.workload import device

# The ops every run on the accelerator loads, by DeepSpeed's builder name.
OPS = {"cpu": ["ShareMemCommBuilder"]}


def main(argv: list[str]) -> int:
    accelerator = argv[0] if argv else "cpu"
    if accelerator not in OPS:
        print(f"suite.prebuild: nothing to build ahead for accelerator {accelerator!r} "
              f"(known: {', '.join(OPS)}); its ops build on a node that has it", file=sys.stderr)
        return 0
    os.environ.update(device.accelerator_environment(accelerator))
    os.environ.update(device.extensions_environment(os.environ, sys.prefix, os.access(sys.prefix, os.W_OK)))
    device.ask_for_the_cpu_once()
    from deepspeed.accelerator import get_accelerator

    for name in OPS[accelerator]:
        start = time.perf_counter()
        get_accelerator().create_op_builder(name).load()
        print(f"suite.prebuild: {name} ready in {time.perf_counter() - start:.1f} s "
              f"({os.environ.get('TORCH_EXTENSIONS_DIR', '~/.cache/torch_extensions')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
