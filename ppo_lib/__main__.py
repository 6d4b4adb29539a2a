"""Command line: ``python -m ppo_lib {train,figures,bench} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys

from .bench import add_bench_parser
from .cli_train import add_train_parser


def _figures(args: argparse.Namespace) -> int:
    from .plotting import render_all

    for path in render_all(args.names or None):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppo_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fig = sub.add_parser("figures", help="regenerate every figure in figures/ (deterministic, CPU)")
    fig.add_argument("names", nargs="*", help="only these figures (default: all)")
    fig.set_defaults(run=_figures)

    add_train_parser(sub)
    add_bench_parser(sub)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
