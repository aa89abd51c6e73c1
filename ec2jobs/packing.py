"""Packing a workdir or a task's file_mounts into one deterministic .tar.gz (client side, no AWS).

- `pack_directory(path)` packs a directory the way git would see it: `.gitignore` files at every level (git
  semantics: the deepest file that has a matching pattern decides, the last matching pattern in a file wins, `!`
  re-includes, `dir/` matches directories only, a file inside an excluded directory cannot be re-included) plus
  `.ec2jobsignore` files (same syntax, read after `.gitignore` in the same directory, so they win there). `.git`
  (directory or file, at any level) is never packed. Matching is the `pathspec` library's `GitIgnoreSpec`.
- `pack_mounts({remote_path: local_path})` packs several local files/directories into one archive laid out by
  index: `manifest.json` (`{"format": 1, "mounts": {"0": {"remote_path": "/data/x", "type": "file"}}}`), then
  `mounts/<index>` (a file) or `mounts/<index>/...` (a directory, packed with the same ignore rules). Indexes follow
  the sorted remote paths, so the same mounts always make the same archive.

Determinism: entries are written in a fixed order (depth first, names sorted), owners are zeroed (uid/gid 0, no
user/group names), permission bits are kept (setuid/setgid/sticky dropped), files and symlinks keep their mtime
(whole seconds) while directories get mtime 0 (a directory's mtime changes whenever anything inside it is created,
ignored files included, which would change the hash of an unchanged tree), and the gzip header carries no name and
no time. The same tree therefore gives the same sha256.

Symlinks are kept as symlinks only when they resolve inside the tree being packed (a target given as an absolute
path is rewritten relative to the link); any other symlink is refused with `PackingError` naming it, as are
sockets, FIFOs and devices (add them to `.ec2jobsignore` to leave them out).

The archive is streamed to a temporary file (never held in memory); `PackedArchive.remove()` deletes it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pathspec import GitIgnoreSpec

GITIGNORE = ".gitignore"
DEFAULT_EXTRA_IGNORE_FILE = ".ec2jobsignore"
NEVER_PACKED = frozenset({".git"})
MANIFEST_NAME = "manifest.json"
MOUNTS_DIR = "mounts"
MANIFEST_FORMAT = 1
_COMPRESS_LEVEL = 6
_PERMISSION_BITS = 0o777


class PackingError(Exception):
    """The tree cannot be packed as asked (a symlink leaving it, a special file, a bad mount path, ...)."""


@dataclass(frozen=True)
class PackedArchive:
    """A packed .tar.gz on disk: its path (a temporary file the caller owns), size in bytes, sha256 (hex) and the
    number of files and symlinks in it (directories and the mounts manifest are not counted)."""

    path: Path
    size: int
    sha256: str
    file_count: int

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> PackedArchive:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


# -- ignore rules ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    base: str  # the directory holding the ignore file, relative to the root ("" for the root)
    spec: GitIgnoreSpec


@dataclass
class _Rules:
    """The ignore files in effect for the directory being walked (outermost first)."""

    extra_ignore_file: str | None
    frames: list[_Frame] = field(default_factory=list)

    def enter(self, directory: Path, rel: str) -> bool:
        """Read `directory`'s ignore files; True when they added a frame (pop it with `leave`)."""
        lines: list[str] = []
        for name in (GITIGNORE, self.extra_ignore_file):
            if not name:
                continue
            candidate = directory / name
            if candidate.is_file():
                try:
                    lines += candidate.read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError as error:
                    raise PackingError(f"cannot read {_shown(rel, name)}: {error.strerror or error}") from error
        if not lines:
            return False
        self.frames.append(_Frame(rel, GitIgnoreSpec.from_lines(lines)))
        return True

    def leave(self) -> None:
        self.frames.pop()

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Git's rule: the deepest ignore file with a matching pattern decides; within it, the last match."""
        for frame in reversed(self.frames):
            sub = rel[len(frame.base) + 1 :] if frame.base else rel
            result = frame.spec.check_file(sub + "/" if is_dir else sub).include
            if result is not None:
                return result
        return False


def _shown(rel: str, name: str = "") -> str:
    path = "/".join(part for part in (rel, name) if part)
    return path or "."


# -- walking --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One archive member: `source` is None for directories and symlinks."""

    name: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    mtime: int
    size: int = 0
    source: Path | None = None
    linkname: str = ""


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _symlink_entry(link: Path, rel: str, arcname: str, root_real: str, st: os.stat_result) -> _Entry:
    target = os.readlink(link)
    resolved = os.path.realpath(link)
    if not _is_within(resolved, root_real):
        raise PackingError(
            f"{rel} is a symlink to {target!r}, which is outside the directory being packed; "
            "replace it with the file itself or list it in .ec2jobsignore"
        )
    lexical = os.path.normpath(os.path.join(os.path.dirname(os.path.join(root_real, rel)), target))
    if os.path.isabs(target) or not _is_within(lexical, root_real):
        # an absolute target (or one that only stays inside through other links) becomes relative to the link
        target = os.path.relpath(resolved, os.path.realpath(os.path.dirname(os.path.join(root_real, rel))))
    return _Entry(arcname, "symlink", st.st_mode & _PERMISSION_BITS, int(st.st_mtime), linkname=target)


def _walk(root: Path, arc_prefix: str, rules: _Rules) -> Iterator[_Entry]:
    """The entries of the tree at `root` (not including `root` itself), depth first, names sorted."""
    root_real = os.path.realpath(root)

    def visit(directory: Path, rel: str) -> Iterator[_Entry]:
        pushed = rules.enter(directory, rel)
        try:
            try:
                with os.scandir(directory) as scan:
                    children = sorted(scan, key=lambda child: child.name)
            except OSError as error:
                raise PackingError(f"cannot read directory {_shown(rel)}: {error.strerror or error}") from error
            for child in children:
                if child.name in NEVER_PACKED:
                    continue
                child_rel = f"{rel}/{child.name}" if rel else child.name
                arcname = f"{arc_prefix}/{child_rel}" if arc_prefix else child_rel
                path = Path(child.path)
                st = child.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if rules.ignored(child_rel, is_dir=True):
                        continue
                    yield _Entry(arcname, "dir", st.st_mode & _PERMISSION_BITS, 0)
                    yield from visit(path, child_rel)
                elif rules.ignored(child_rel, is_dir=False):
                    continue
                elif stat.S_ISLNK(st.st_mode):
                    yield _symlink_entry(path, child_rel, arcname, root_real, st)
                elif stat.S_ISREG(st.st_mode):
                    mode = st.st_mode & _PERMISSION_BITS
                    yield _Entry(arcname, "file", mode, int(st.st_mtime), st.st_size, path)
                else:
                    raise PackingError(
                        f"{child_rel} is not a regular file, directory or symlink (a socket, FIFO or device); "
                        "list it in .ec2jobsignore"
                    )
        finally:
            if pushed:
                rules.leave()

    yield from visit(root, "")


# -- writing --------------------------------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file object that hashes and counts what it passes to the file below."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mode = entry.mode
    info.mtime = entry.mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.linkname
    else:
        info.type = tarfile.REGTYPE
        info.size = entry.size
    return info


def _write_archive(
    entries: Iterator[_Entry], extra: list[tuple[tarfile.TarInfo, bytes]] | None = None
) -> PackedArchive:
    """Stream `extra` members (small, in memory) then `entries` into a temporary .tar.gz."""
    handle, name = tempfile.mkstemp(prefix="ec2jobs-", suffix=".tar.gz")
    path = Path(name)
    files = 0
    try:
        with os.fdopen(handle, "wb") as raw:
            writer = _HashingWriter(raw)
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=writer, compresslevel=_COMPRESS_LEVEL, mtime=0)  # type: ignore[arg-type]
            with gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for info, data in extra or []:
                    tar.addfile(info, _BytesReader(data))
                for entry in entries:
                    info = _tarinfo(entry)
                    if entry.source is None:
                        tar.addfile(info)
                    else:
                        _add_file(tar, info, entry.source)
                    if entry.kind != "dir":
                        files += 1
        return PackedArchive(path, writer.size, writer.digest.hexdigest(), files)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, source: Path) -> None:
    try:
        with source.open("rb") as content:
            tar.addfile(info, content)
    except OSError as error:
        # tarfile raises OSError("unexpected end of data") when a file shrank after it was listed
        raise PackingError(
            f"cannot pack {info.name}: {error.strerror or error} (did it change while packing?)"
        ) from error


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else min(len(self._data), self._offset + size)
        chunk = bytes(self._data[self._offset : end])
        self._offset = end
        return chunk


# -- public API -----------------------------------------------------------------------------------------------------


def pack_directory(
    path: str | os.PathLike[str], *, extra_ignore_file: str | None = DEFAULT_EXTRA_IGNORE_FILE
) -> PackedArchive:
    """Pack the directory at `path` (members named relative to it) into a temporary .tar.gz."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PackingError(f"{root} is not a directory")
    _check_ignore_file_name(extra_ignore_file)
    return _write_archive(_walk(root, "", _Rules(extra_ignore_file)))


def pack_mounts(
    mounts: Mapping[str, str | os.PathLike[str]], *, extra_ignore_file: str | None = DEFAULT_EXTRA_IGNORE_FILE
) -> PackedArchive:
    """Pack `{remote_path: local_path}` into one archive: `manifest.json` + `mounts/<index>[/...]` (module doc)."""
    _check_ignore_file_name(extra_ignore_file)
    by_remote: dict[str, Path] = {}
    for remote, local in mounts.items():
        normalized = check_remote_path(remote)
        if normalized in by_remote:
            raise PackingError(f"file_mounts names {normalized} more than once")
        by_remote[normalized] = Path(local).expanduser()
    planned: list[tuple[int, str, Path, str]] = []
    for index, remote in enumerate(sorted(by_remote)):
        local = by_remote[remote]
        if local.is_dir():
            planned.append((index, remote, local, "dir"))
        elif local.is_file():
            planned.append((index, remote, local, "file"))
        else:
            raise PackingError(f"file_mounts {remote}: {local} is not a file or directory (or does not exist)")
    manifest = {
        "format": MANIFEST_FORMAT,
        "mounts": {str(index): {"remote_path": remote, "type": kind} for index, remote, _, kind in planned},
    }
    data = json.dumps(manifest, sort_keys=True, indent=1).encode() + b"\n"
    info = tarfile.TarInfo(MANIFEST_NAME)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return _write_archive(_mount_entries(planned, extra_ignore_file), [(info, data)])


def _mount_entries(planned: list[tuple[int, str, Path, str]], extra_ignore_file: str | None) -> Iterator[_Entry]:
    if planned:
        yield _Entry(MOUNTS_DIR, "dir", 0o755, 0)
    for index, _, local, kind in planned:
        name = f"{MOUNTS_DIR}/{index}"
        if kind == "file":
            st = local.stat()  # a mounted file is what its path names: a symlink given here is followed
            yield _Entry(name, "file", st.st_mode & _PERMISSION_BITS, int(st.st_mtime), st.st_size, local)
        else:
            yield _Entry(name, "dir", local.stat().st_mode & _PERMISSION_BITS, 0)
            yield from _walk(local, name, _Rules(extra_ignore_file))


def check_remote_path(remote: str) -> str:
    """A file_mounts destination: an absolute path, or one under the job user's home (`~/…`, as SkyPilot allows),
    without `..` (normalized: `//` and `.` collapse, no trailing slash). PackingError otherwise."""
    if isinstance(remote, str) and remote.startswith("~/"):
        return "~" + check_remote_path(remote[1:])
    if not isinstance(remote, str) or not remote.startswith("/"):
        raise PackingError(f"file_mounts destination {remote!r} must be an absolute path (start with /)")
    if "\x00" in remote or "\\" in remote:
        raise PackingError(f"file_mounts destination {remote!r} contains a NUL or backslash")
    if ".." in remote.split("/"):
        raise PackingError(f"file_mounts destination {remote!r} must not contain '..'")
    normalized = posixpath.normpath(remote)
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    if normalized == "/":
        raise PackingError("file_mounts destination must not be / itself")
    return normalized


def _check_ignore_file_name(name: str | None) -> None:
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise PackingError(f"the extra ignore file must be a plain file name, not {name!r}")
