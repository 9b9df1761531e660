"""`cocu archives`: the published archive versions, here and on the object store (`storage.archives`), and fetching
one from there into a local folder (checked against its version.json) on a machine that never curated."""

from __future__ import annotations

import argparse
from pathlib import Path

from cocu_core.cli.registry import UserError, add_config_args, command, load_config_args
from cocu_core.layout import versions_root
from cocu_core.storage import StorageError, join
from cocu_core.versions import fetch_version, list_versions, remote_versions, version_dir


def _setup(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("action", choices=["list", "fetch"], help="list: versions here and remote; fetch: copy one here")
    p.add_argument("--version", type=int, default=None, help="fetch: the version number (default: the newest remote)")
    p.add_argument("--to", type=Path, default=None,
                   help="fetch: destination folder (default: the work folder's archives/<variant>/vNNNN)")


@command("archives", _setup)
def cmd_archives(args: argparse.Namespace) -> int:
    """List published archive versions, or fetch one from `storage.archives`."""
    cfg = load_config_args(args)
    variant = cfg.curation.variant
    root = versions_root(cfg.workpath, variant)
    remote = join(cfg.storage.archives, variant) if cfg.storage.archives else None
    try:
        there = remote_versions(remote, cfg.storage.options) if remote else []
    except StorageError as exc:
        raise UserError(str(exc)) from None
    if args.action == "list":
        print(f"archive versions of '{variant}' in {root}: {', '.join(map(str, list_versions(root))) or 'none'}")
        if remote:
            print(f"archive versions of '{variant}' at {remote}: {', '.join(map(str, there)) or 'none'}")
        return 0
    if not remote:
        raise UserError("storage.archives is not set: there is no remote copy to fetch from")
    if not there:
        raise UserError(f"no archive version at {remote}")
    number = args.version or there[-1]
    dest = args.to or version_dir(root, number)
    try:
        out = fetch_version(remote, number, dest, cfg.storage.options)
    except StorageError as exc:
        raise UserError(str(exc)) from None
    print(f"archive version {number} of '{variant}' fetched from {remote} into {out} (checksums verified)")
    return 0
