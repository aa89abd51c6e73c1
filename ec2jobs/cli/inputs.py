"""What `ec2jobs submit` does with a task's inputs before it sends the spec: `workdir` and `file_mounts` on this
machine are packed (ec2jobs/packing.py: .gitignore and .ec2jobsignore honoured) and uploaded straight to the
control plane's bucket (POST /uploads, presigned PUTs with ec2jobs/transfer.py, POST /uploads/{id}/complete), and
`secrets` get their values from `--secret`.

- `workdir: .` (a path, relative to the current directory as in SkyPilot) → `workdir: {upload: up-…}`;
  `workdir: {url, ref}` (a git repository) and `{upload: …}` pass through.
- `file_mounts: {/remote/path: ./local, …}` → one archive of every mount → `file_mounts: {upload: up-…}`.
  S3 (and gs://, r2://, https://) sources are refused before anything is sent: the control plane has no
  credentials for other accounts' buckets (the API says the same).
- `secrets: {HF_TOKEN: null}` must be filled with `--secret HF_TOKEN` (from this shell's environment) or
  `--secret HF_TOKEN=VALUE`; values are never printed (they join the redaction list of ec2jobs.cli.output).

Temporary archives are deleted whatever happens. A part PUT answered 403 (a URL that stopped working early: the
API's signing session ended) gets fresh URLs once (POST /uploads/{id}/parts) and the upload is sent again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.core.inputs import S3_MOUNT_HELP
from ec2jobs import packing, transfer
from ec2jobs.cli import output
from ec2jobs.cli.config import ENV_NAME
from ec2jobs.cli.errors import CliError, UsageError
from ec2jobs.client import Client, JsonObject

REMOTE_SOURCES = ("s3://", "gs://", "r2://", "cos://", "https://", "http://")  # as core/inputs.parse_file_mounts
_URL_MARKERS = ("://", "git@")


# -- secrets --------------------------------------------------------------------------------------------------


def parse_secret_options(options: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`--secret NAME=VALUE` / `--secret NAME` (from `environ`) → {NAME: VALUE}; the last one of a name wins. Every
    value joins the redaction list at once."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if sep:
            output.secrets.add(value)
        if not ENV_NAME.fullmatch(name):
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise UsageError(f"--secret {shown!r}: a secret name is letters, digits and '_', not starting with a digit")
        if not sep:
            if name not in env:
                raise UsageError(
                    f"--secret {name}: {name} is not set in your environment (export it, or pass --secret {name}=VALUE)"
                )
            value = env[name]
            output.secrets.add(value)
        values[name] = value
    return values


def apply_secrets(spec: dict[str, Any], given: Mapping[str, str], source: str) -> dict[str, Any]:
    """The spec with `given` merged into its `secrets`; a UsageError names every secret still without a value."""
    declared = spec.get("secrets")
    if declared is None and not given:
        return spec
    if declared is not None and not isinstance(declared, dict):
        kind = type(declared).__name__
        raise UsageError(f"{source}: secrets must be a mapping of NAME: null (or a value), not {kind}")
    merged: dict[str, Any] = {**(declared or {}), **given}
    for value in merged.values():
        if isinstance(value, str):
            output.secrets.add(value)
    missing = [str(name) for name, value in merged.items() if value is None]
    if missing:
        flags = " ".join(f"--secret {name}" for name in missing)
        raise UsageError(
            f"{source}: no value for secret {', '.join(missing)}: pass {flags} (takes the value from your environment) "
            "or --secret NAME=VALUE"
        )
    return {**spec, "secrets": merged}


# -- workdir and file_mounts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalInputs:
    """What a task asks to upload: the workdir directory and the file_mounts mapping (remote → local path)."""

    workdir: Path | None
    mounts: dict[str, Path]

    @property
    def empty(self) -> bool:
        return self.workdir is None and not self.mounts


def local_inputs(spec: Mapping[str, Any], base: Path, source: str) -> LocalInputs:
    """The local workdir and mounts of `spec` (paths relative to `base`), checked without reading them: S3 and
    other remote sources are a UsageError (S3_MOUNT_HELP), as is a path that does not exist."""
    workdir: Path | None = None
    raw = spec.get("workdir")
    if isinstance(raw, str) and not any(marker in raw for marker in _URL_MARKERS):
        workdir = (base / Path(raw).expanduser()).absolute()
        if not workdir.is_dir():
            raise UsageError(f"{source}: workdir {raw!r} is not a directory (paths are relative to {base})")
    mounts: dict[str, Path] = {}
    raw_mounts = spec.get("file_mounts")
    if isinstance(raw_mounts, dict) and set(raw_mounts) != {"upload"}:
        for remote, local in raw_mounts.items():
            if isinstance(local, dict):  # a SkyPilot storage mount: {source: s3://…, mode: MOUNT}
                local = local.get("source")
                if not isinstance(local, str) or local.startswith(REMOTE_SOURCES):
                    raise UsageError(f"{source}: file_mounts {remote}: storage mounts are refused: {S3_MOUNT_HELP}")
            if not isinstance(local, str) or not local:
                raise UsageError(f"{source}: file_mounts {remote}: give a local path (a string)")
            if local.startswith(REMOTE_SOURCES):
                raise UsageError(f"{source}: file_mounts {remote}: {local.split('://')[0]}:// sources: {S3_MOUNT_HELP}")
            path = (base / Path(local).expanduser()).absolute()
            if not path.exists():
                raise UsageError(f"{source}: file_mounts {remote}: {local} does not exist (relative to {base})")
            mounts[str(remote)] = path
    return LocalInputs(workdir, mounts)


def upload_archive(
    client: Client,
    archive: packing.PackedArchive,
    kind: str,
    progress: transfer.ProgressOption,
    upload: Callable[..., list[dict[str, Any]]] = transfer.upload,
) -> JsonObject:
    """POST /uploads, PUT the parts, POST …/complete; returns the completion. One retry with fresh URLs when a
    part answers 403."""
    created = client.create_upload(kind, archive.size, archive.sha256)
    upload_id = str(created["upload_id"])
    try:
        parts = upload(created["parts"], archive.path, int(created["part_size"]), progress)
    except transfer.TransferError as error:
        if "HTTP 403" not in str(error):
            raise CliError(f"uploading the {kind} failed: {error}") from None
        fresh = client.refresh_upload_parts(upload_id)
        try:
            parts = upload(fresh["parts"], archive.path, int(fresh["part_size"]), progress)
        except transfer.TransferError as again:
            raise CliError(f"uploading the {kind} failed: {again}") from None
    completed = client.complete_upload(upload_id, parts)
    return completed


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def upload_inputs(
    client: Client,
    spec: dict[str, Any],
    inputs: LocalInputs,
    say: Callable[[str], None],
    progress: transfer.ProgressOption | None = None,
) -> dict[str, Any]:
    """Pack and upload the local workdir and mounts; the spec naming the uploads instead. Archives are removed."""
    if inputs.empty:
        return spec
    shown = sys.stderr.isatty() if progress is None else progress
    result = dict(spec)
    steps: list[tuple[str, Callable[[], packing.PackedArchive], str]] = []
    if inputs.workdir is not None:
        directory = inputs.workdir
        steps.append(("workdir", lambda: packing.pack_directory(directory), str(directory)))
    if inputs.mounts:
        mounts = dict(inputs.mounts)
        steps.append(("file_mounts", lambda: packing.pack_mounts(mounts), f"{len(mounts)} mount(s)"))
    for kind, pack, what in steps:
        try:
            archive = pack()
        except packing.PackingError as error:
            raise UsageError(f"{kind}: {error}") from None
        with archive:
            done = upload_archive(client, archive, kind, shown)
        result[kind] = {"upload": done["upload_id"]}
        say(f"uploaded {kind} {what}: {archive.file_count} files, {_size(archive.size)} packed ({done['upload_id']})")
    return result
