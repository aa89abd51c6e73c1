"""`ec2jobs download JOB [--to DIR] [--checkpoints]`: every file a job stored in its outputs (or checkpoints), from
the API's listing (GET /jobs/{id}/outputs, short-lived presigned URLs) to DIR, default `./<job_id>/outputs` (or
`./<job_id>/checkpoints`).

Each file is written through a temporary file and checked against the listed size (ec2jobs/transfer.py). A path
that would land outside DIR (absolute, `..`, a backslash) is refused and reported; the command then exits 1.
A URL answered 403 (it stopped working early: the API's signing session ended) is listed afresh once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from ec2jobs import transfer
from ec2jobs.cli import output
from ec2jobs.cli.args import Parents
from ec2jobs.cli.config import client_for
from ec2jobs.cli.errors import EXIT_FAILED, EXIT_OK, CliError
from ec2jobs.client import Client, JsonObject


def safe_target(root: Path, path: str) -> Path | None:
    """Where `path` (a listed file, '/'-separated, relative) goes under `root`; None if it would escape it."""
    if not path or "\\" in path or "\x00" in path:
        return None
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        return None
    target = root.joinpath(*pure.parts)
    resolved_root = root.resolve()
    try:
        target.resolve().relative_to(resolved_root)  # a symlink already in DIR cannot lead outside either
    except ValueError:
        return None
    return target


def _fresh_url(client: Client, job_id: str, kind: str, path: str) -> str | None:
    for item in client.iter_outputs(job_id, kind):
        if item.get("path") == path:
            return str(item["url"])
    return None


def _download_one(
    client: Client, job_id: str, kind: str, item: JsonObject, target: Path, progress: transfer.ProgressOption
) -> None:
    path, size = str(item["path"]), int(item["size"])
    try:
        transfer.download(str(item["url"]), target, size, progress)
    except transfer.TransferError as error:
        if "HTTP 403" not in str(error):
            raise CliError(f"downloading {path} failed: {error}") from None
        url = _fresh_url(client, job_id, kind, path)
        if url is None:
            raise CliError(f"{path} is no longer listed (it expired or was replaced)") from None
        try:
            transfer.download(url, target, size, progress)
        except transfer.TransferError as again:
            raise CliError(f"downloading {path} failed: {again}") from None


def cmd_download(args: argparse.Namespace) -> int:
    kind = "checkpoints" if args.checkpoints else "outputs"
    root = Path(args.to) if args.to else Path(args.job_id) / kind
    client = client_for(args)
    files = list(client.iter_outputs(args.job_id, kind))
    if not files:
        output.out(f"job {args.job_id} has no {kind} (yet)")
        return EXIT_OK
    root.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []
    written = 0
    total = 0
    bar: Any = transfer.new_progress() if sys.stderr.isatty() else None
    if bar is not None:
        bar.start()
    try:
        for item in files:
            path = str(item.get("path") or "")
            target = safe_target(root, path)
            if target is None:
                refused.append(path)
                continue
            _download_one(client, args.job_id, kind, item, target, bar or False)
            written += 1
            total += int(item["size"])
            output.out(f"wrote {target} ({int(item['size'])} bytes)")
    finally:
        if bar is not None:
            bar.stop()
    output.out(f"{written} file(s), {total} bytes of job {args.job_id}'s {kind} in {root}")
    if refused:
        shown = ", ".join(repr(p[:80]) for p in refused[:5]) + (" …" if len(refused) > 5 else "")
        output.err(f"ec2jobs: refused {len(refused)} path(s) that would land outside {root}: {shown}")
        return EXIT_FAILED
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    download = commands.add_parser(
        "download", parents=[parents.connection], help="download a job's outputs (or checkpoints)"
    )
    download.add_argument("job_id", metavar="JOB")
    download.add_argument(
        "--to", metavar="DIR", help="where to write them (default ./JOB/outputs or ./JOB/checkpoints)"
    )
    download.add_argument("--checkpoints", action="store_true", help="the job's checkpoints instead of its outputs")
    download.set_defaults(func=cmd_download)
