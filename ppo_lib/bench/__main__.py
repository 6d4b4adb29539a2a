"""``python -m ppo_lib.bench``: deprecated, kept working; use ``python -m ppo_lib bench`` (same flags).

Before the benchmark became a package, ``python -m ppo_lib.bench ppo_lib|floor MODE ...`` ran
one system in its own process; that form now forwards to :mod:`ppo_lib.bench.child`.
"""

import argparse
import sys

from . import add_bench_parser
from .child import main as child_main

print("note: `python -m ppo_lib.bench` is deprecated; use `python -m ppo_lib bench` (same flags).", file=sys.stderr)
argv = sys.argv[1:]
if argv[:1] in (["ppo_lib"], ["floor"]):  # the old form of one system's process
    sys.exit(child_main(argv))
parser = argparse.ArgumentParser(prog="python -m ppo_lib")
add_bench_parser(parser.add_subparsers(dest="command"))
args = parser.parse_args(["bench", *argv])
sys.exit(args.run(args))
