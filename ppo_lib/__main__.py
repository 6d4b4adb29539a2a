"""The one command line: ``python -m ppo_lib {train,dpo,compare,reward-model,figures,bench,classroom} ...`` (see ``--help``).

* ``train``      PPO (or another registered algorithm) from the command line (:mod:`ppo_lib.cli_train`)
* ``dpo``        DPO on a JSONL file of preference pairs (:mod:`ppo_lib.cli_compare`)
* ``compare``    every algorithm on one task at an equal token budget (:mod:`ppo_lib.cli_compare`)
* ``figures``    every figure of the book into ``figures/`` (:mod:`ppo_lib.plotting`)
* ``bench``      ppo_lib against TRL's PPO and the raw-compute floor (:mod:`ppo_lib.bench`)
* ``classroom``  student versions, grading, Colab setup (:mod:`ppo_lib.classroom`)
* ``reward-model`` chapter 08's gold/proxy experiment (:mod:`ppo_lib.cli_reward_model`)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bench import add_bench_parser
from .cli_compare import add_compare_parser, add_dpo_parser
from .cli_reward_model import add_reward_model_parser
from .cli_train import add_train_parser


def _figures(args: argparse.Namespace) -> int:
    from .plotting import render_all

    if args.train_ch06:  # retrain chapter 06's precomputed β = 0 / β > 0 runs first (slow)
        from .plotting.ch06 import main as train_ch06

        train_ch06(["--updates", str(args.updates)])

    for path in render_all(args.names or None, out=args.out):
        print(path)
    return 0


def _classroom(argv: list[str]) -> int:
    from .classroom import main as classroom_main

    return classroom_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["classroom"]:  # its own parser takes every flag, --help included
        return _classroom(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m ppo_lib", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The book's one command line:\n"
                    "  train      fine-tune an LM with PPO (or another registered algorithm) against a reward\n"
                    "  dpo        DPO on a JSONL file of preference pairs\n"
                    "  compare    every algorithm on one task at an equal budget of generated tokens\n"
                    "  figures    every figure of the book into figures/\n"
                    "  bench      ppo_lib against TRL's PPO and the raw-compute floor\n"
                    "  classroom  student versions, grading, Colab setup\n"
                    "  reward-model  chapter 08: reward models, best-of-n and PPO against a proxy\n"
                    "Each command has its own --help.")
    sub = parser.add_subparsers(dest="command", required=True)

    fig = sub.add_parser("figures", help="regenerate every figure in figures/ (deterministic, CPU)")
    fig.add_argument("names", nargs="*", help="only these figures (default: all)")
    fig.add_argument("--train-ch06", action="store_true",
                     help="first retrain chapter 06's precomputed beta = 0 / beta > 0 runs on SmolLM2 (slow: two training runs)")
    fig.add_argument("--updates", type=int, default=40, help="updates of each --train-ch06 run (default 40)")
    fig.add_argument("--out", type=Path, default=None,
                     help="write the PNGs into this folder instead of figures/ (to compare with the committed ones)")
    fig.set_defaults(run=_figures)

    sub.add_parser("classroom", help="student versions, grading and Colab setup (see `classroom --help`)",
                   add_help=False)  # dispatched above, before this parser

    add_train_parser(sub)
    add_dpo_parser(sub)
    add_compare_parser(sub)
    add_bench_parser(sub)
    add_reward_model_parser(sub)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
