"""``python -m sqn_ray.study run|validate|check-cluster ...``: the study commands without the full CLI."""
import argparse
import sys

from .cli import add_study_commands, run_study_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqn_ray.study")
    sub = parser.add_subparsers(dest="command", required=True)
    add_study_commands(sub)
    args = parser.parse_args(["study", *(sys.argv[1:] if argv is None else argv)])
    return run_study_command(args)


if __name__ == "__main__":
    sys.exit(main())
