"""One system of the benchmark, alone in this process, so that its peak memory is its own.

    python -m ppo_lib.bench.child ppo_lib shared --workload workload.json --out shared.json
    python -m ppo_lib.bench.child floor lora --workload workload.json --out floor_lora.json

:func:`~ppo_lib.bench.harness.run_all` starts one such process per system, each reading the
same workload file; the TRL side is :mod:`ppo_lib.bench.trl_side`, started with the python
of TRL's virtual environment. The result (JSON) is the side's timings plus this process's
peak RSS and the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .trl_side import peak_rss_mb  # one definition, in the file that must run without ppo_lib
from .workload import MODES, WORKLOAD, Workload

__all__ = ["main", "peak_rss_mb"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m ppo_lib.bench.child", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("ppo_lib", "floor"))
    p.add_argument("mode", choices=MODES)
    p.add_argument("--workload", help="JSON file of the Workload (default: the published one)")
    p.add_argument("--updates", type=int, help="instead of the workload's updates (a floor's: floor_updates)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="instead of the workload's device")
    p.add_argument("--exact", action="store_true", help="ppo_lib: old log-probs from a forward pass (the default config)")
    p.add_argument("--no-checkpointing", action="store_true", help="ppo_lib lora: keep activations (no checkpointing)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.kind == "floor" and (a.exact or a.no_checkpointing):
        p.error("--exact and --no-checkpointing are options of the ppo_lib side; a floor has neither.")
    workload = Workload.from_json(Path(a.workload).read_text()) if a.workload else WORKLOAD
    if a.updates is not None:
        workload = dataclasses.replace(workload, **{"floor_updates" if a.kind == "floor" else "updates": a.updates})
    if a.device is not None:
        workload = dataclasses.replace(workload, device=a.device)

    import torch

    torch.set_num_threads(workload.torch_threads)
    load_before = os.getloadavg()
    if a.kind == "ppo_lib":
        from .library_side import run

        result = run(workload, a.mode, a.exact, False if a.no_checkpointing else None)
    else:
        from .floor import run

        result = run(workload, a.mode)
    result.update(peak_rss_mb=peak_rss_mb(), loadavg_before=load_before, loadavg_after=os.getloadavg())
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
