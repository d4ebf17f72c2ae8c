"""``python -m analysis report DIR`` / ``python -m analysis eigen``: the analysis commands on their own."""
import argparse
import sys

from .cli import add_eigen_command, add_report_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="sqn-ray study analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    add_report_command(sub)
    add_eigen_command(sub)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
