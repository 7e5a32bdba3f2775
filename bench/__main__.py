"""``python -m bench [NAME ...]``: run the benchmarks (all of them when no name is given).

Each prints one line per figure and a SUMMARY line on stdout (progress goes to stderr) and
writes ``bench/results/<name>.json``. Options of one benchmark are prefixed with its name
(``--service-reps 5``); ``python -m bench --help`` lists them with their defaults.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

from bench.common import BenchError

BENCHMARKS = {
    "service": "bench.service",
    "cache": "bench.cache",
    "migrations": "bench.migrations",
    "judgement": "bench.judgement",
    "pulumi": "bench.pulumi_program",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m bench",
        description="Benchmarks that measure what the portal platform promises, side by side "
        "in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run ({', '.join(BENCHMARKS)}); default: all",
    )
    for module in BENCHMARKS.values():
        importlib.import_module(module).add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(
            f"python -m bench: unknown benchmark {', '.join(unknown)} "
            f"(choose from {', '.join(BENCHMARKS)})",
            file=sys.stderr,
        )
        return 2
    names = args.names or list(BENCHMARKS)
    failed: list[str] = []
    for name in names:
        started = time.monotonic()
        try:
            importlib.import_module(BENCHMARKS[name]).run(args)
        except BenchError as exc:
            print(f"{name:<11} FAILED   {' '.join(str(exc).split())}", flush=True)
            failed.append(name)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            print(
                f"{name:<11} FAILED   {type(exc).__name__}: {' '.join(str(exc).split())}",
                flush=True,
            )
            failed.append(name)
        print(f"[{name}] done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
