"""ec2jobs/packing.py: git's ignore semantics (root + nested .gitignore, negation, directory patterns,
.ec2jobsignore), deterministic archives, symlinks that leave the tree refused, the mounts manifest, streaming."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ec2jobs.packing import PackedArchive, PackingError, check_remote_path, pack_directory, pack_mounts


def write(root: Path, rel: str, text: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def pack() -> Iterator[Callable[..., PackedArchive]]:
    made: list[PackedArchive] = []

    def run(path: Path, **kwargs: object) -> PackedArchive:
        archive = pack_directory(path, **kwargs)  # type: ignore[arg-type]
        made.append(archive)
        return archive

    yield run
    for archive in made:
        archive.remove()


def members(archive: PackedArchive) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive.path, "r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def files(archive: PackedArchive) -> set[str]:
    return {name for name, member in members(archive).items() if not member.isdir()}


# -- ignore rules -----------------------------------------------------------------------------------------------------


def test_root_gitignore_with_nested_negation_applies_only_below_it(
    tmp_path: Path, pack: Callable[..., PackedArchive]
) -> None:
    write(tmp_path, ".gitignore", "*.log\n")
    write(tmp_path, "top.log")
    write(tmp_path, "a/.gitignore", "!keep.log\n")
    write(tmp_path, "a/keep.log")
    write(tmp_path, "a/other.log")
    write(tmp_path, "a/deep/keep.log")  # the nested file's pattern has no slash: it matches at any depth below a/
    write(tmp_path, "b/keep.log")  # outside a/: the root's *.log still decides
    write(tmp_path, "b/code.py")
    assert files(pack(tmp_path)) == {
        ".gitignore",
        "a/.gitignore",
        "a/keep.log",
        "a/deep/keep.log",
        "b/code.py",
    }


def test_deeper_gitignore_can_exclude_what_the_root_keeps(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    write(tmp_path, ".gitignore", "*.txt\n!important.txt\n")
    write(tmp_path, "important.txt")
    write(tmp_path, "sub/.gitignore", "important.txt\n")
    write(tmp_path, "sub/important.txt")
    assert files(pack(tmp_path)) == {".gitignore", "important.txt", "sub/.gitignore"}


def test_directory_patterns_match_directories_only(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    write(tmp_path, ".gitignore", "build/\n/dist\n")
    write(tmp_path, "build/out.bin")
    write(tmp_path, "src/build/gen.c")  # build/ has no leading slash: any directory named build
    write(tmp_path, "docs/build", "a file named build is not a directory")
    write(tmp_path, "dist/x")
    write(tmp_path, "src/dist/y")  # /dist is anchored to the root
    names = set(members(pack(tmp_path)))
    assert "build" not in names
    assert "src/build" not in names
    assert "docs/build" in names
    assert "dist" not in names
    assert "src/dist/y" in names


def test_negation_in_the_same_file_and_no_reinclusion_inside_an_excluded_directory(
    tmp_path: Path, pack: Callable[..., PackedArchive]
) -> None:
    write(tmp_path, ".gitignore", "data/*\n!data/keep.txt\nsecret/\n!secret/public.txt\n")
    write(tmp_path, "data/keep.txt")
    write(tmp_path, "data/drop.txt")
    write(tmp_path, "secret/public.txt")  # git cannot re-include a file whose directory is excluded
    assert files(pack(tmp_path)) == {".gitignore", "data/keep.txt"}


def test_anchored_and_double_star_patterns(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    write(tmp_path, ".gitignore", "/top.txt\ndocs/**/*.md\n")
    write(tmp_path, "top.txt")
    write(tmp_path, "sub/top.txt")
    write(tmp_path, "docs/a/b/c.md")
    write(tmp_path, "docs/readme.txt")
    assert files(pack(tmp_path)) == {".gitignore", "sub/top.txt", "docs/readme.txt"}


def test_ec2jobsignore_excludes_and_wins_over_gitignore_in_its_directory(
    tmp_path: Path, pack: Callable[..., PackedArchive]
) -> None:
    write(tmp_path, ".gitignore", "*.ckpt\n")
    write(tmp_path, ".ec2jobsignore", "datasets/\n!small.ckpt\n")
    write(tmp_path, "datasets/huge.bin")
    write(tmp_path, "small.ckpt")
    write(tmp_path, "big.ckpt")
    write(tmp_path, "sub/.ec2jobsignore", "*.tmp\n")
    write(tmp_path, "sub/a.tmp")
    write(tmp_path, "sub/a.py")
    assert files(pack(tmp_path)) == {".gitignore", ".ec2jobsignore", "small.ckpt", "sub/.ec2jobsignore", "sub/a.py"}
    # another name, or none: only .gitignore applies
    assert "datasets/huge.bin" in files(pack(tmp_path, extra_ignore_file=None))
    write(tmp_path, ".myignore", "sub/\n")
    assert not any(name.startswith("sub/") for name in files(pack(tmp_path, extra_ignore_file=".myignore")))


def test_git_directory_is_never_packed(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    write(tmp_path, ".gitignore", "!.git\n!.git/\n")
    write(tmp_path, ".git/HEAD", "ref: refs/heads/main")
    write(tmp_path, "vendor/lib/.git", "gitdir: ../../.git/modules/lib")  # a submodule's .git file
    write(tmp_path, "vendor/lib/code.py")
    names = set(members(pack(tmp_path)))
    assert not any(part == ".git" for name in names for part in name.split("/"))
    assert "vendor/lib/code.py" in names


def test_extra_ignore_file_must_be_a_plain_name(tmp_path: Path) -> None:
    with pytest.raises(PackingError, match="plain file name"):
        pack_directory(tmp_path, extra_ignore_file="../x")


# -- determinism and metadata -----------------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    write(root, ".gitignore", "__pycache__/\n*.pyc\n")
    write(root, "train.py", "print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    write(root, "pkg/mod.py", "x = 1\n")
    write(root, "pkg/data/a.json", "{}")
    (root / "empty").mkdir()
    os.symlink("pkg/mod.py", root / "mod_link.py")
    for path in sorted(root.rglob("*")):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)


def test_same_tree_same_sha256_wherever_it_lives_and_whatever_is_ignored(
    tmp_path: Path, pack: Callable[..., PackedArchive]
) -> None:
    first = tmp_path / "one"
    _tree(first)
    a, b = pack(first), pack(first)
    assert a.sha256 == b.sha256
    assert a.path != b.path
    second = tmp_path / "two"
    shutil.copytree(first, second, symlinks=True)
    for path in second.rglob("*"):
        os.utime(path, (1_600_000_000, 1_700_000_000), follow_symlinks=False)
    for directory in [second, *[p for p in second.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        os.utime(directory, (1_600_000_000, 1_650_000_000))  # directory times are not part of the archive
    assert pack(second).sha256 == a.sha256
    write(second, "pkg/__pycache__/mod.cpython-311.pyc", "bytecode")  # ignored: changes only directory mtimes
    assert pack(second).sha256 == a.sha256
    # what is packed does change it: content, and a file's mtime (kept)
    os.utime(second / "train.py", (1_700_000_001, 1_700_000_001))
    assert pack(second).sha256 != a.sha256
    write(first, "train.py", "print('changed')\n")
    os.utime(first / "train.py", (1_700_000_000, 1_700_000_000))
    assert pack(first).sha256 != a.sha256


def test_archive_metadata_is_normalised(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    _tree(tmp_path)
    archive = pack(tmp_path)
    raw = archive.path.read_bytes()
    assert archive.size == len(raw)
    assert archive.sha256 == hashlib.sha256(raw).hexdigest()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip header MTIME
    assert raw[3] & 0x08 == 0  # no FNAME in the gzip header
    found = members(archive)
    assert list(found) == sorted(found, key=lambda name: name.split("/"))  # depth first, names sorted
    for name, member in found.items():
        assert not name.startswith("/")
        assert ".." not in name.split("/")
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == (0 if member.isdir() else 1_700_000_000)
    assert found["run.sh"].mode == 0o755
    assert found["train.py"].mode == 0o644
    assert found["empty"].isdir()
    assert archive.file_count == 6  # .gitignore, train.py, run.sh, pkg/mod.py, pkg/data/a.json, mod_link.py


def test_contents_round_trip(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    source = tmp_path / "src"
    _tree(source)
    archive = pack(source)
    out = tmp_path / "out"
    with tarfile.open(archive.path, "r:gz") as tar:
        tar.extractall(out, filter="data")
    assert (out / "pkg/mod.py").read_text() == "x = 1\n"
    assert (out / "mod_link.py").is_symlink()
    assert (out / "mod_link.py").read_text() == "x = 1\n"
    assert os.access(out / "run.sh", os.X_OK)


def test_archive_is_streamed_not_held_in_memory(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    size = 24 * 1024 * 1024
    with (tmp_path / "weights.bin").open("wb") as out:
        for _ in range(size // (1024 * 1024)):
            out.write(os.urandom(1024 * 1024))  # incompressible: the archive is as large as the file
    tracemalloc.start()
    try:
        archive = pack(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert archive.size > size
    assert peak < 4 * 1024 * 1024


# -- symlinks and special files ---------------------------------------------------------------------------------------


def test_symlinks_inside_the_tree_are_kept_as_relative_links(
    tmp_path: Path, pack: Callable[..., PackedArchive]
) -> None:
    root = tmp_path / "root"
    write(root, "data/file.txt", "payload")
    os.symlink("data/file.txt", root / "rel")
    os.symlink(root / "data" / "file.txt", root / "abs")  # absolute, but inside: rewritten relative
    write(root, "sub/x", "")
    os.symlink("../data", root / "sub" / "up")  # leaves sub/ but stays inside root
    found = members(pack(root))
    assert found["rel"].issym()
    assert found["rel"].linkname == "data/file.txt"
    assert found["abs"].issym()
    assert found["abs"].linkname == "data/file.txt"
    assert found["sub/up"].issym()
    assert found["sub/up"].linkname == "../data"
    assert "sub/up/file.txt" not in found  # a link to a directory is not followed


@pytest.mark.parametrize("target", ["../outside.txt", "/etc/passwd", "inner/../../outside.txt"])
def test_symlink_leaving_the_tree_is_refused_with_its_name(tmp_path: Path, target: str) -> None:
    root = tmp_path / "root"
    write(tmp_path, "outside.txt", "secret")
    write(root, "inner/keep.txt")
    os.symlink(target, root / "escape")
    with pytest.raises(PackingError, match=r"escape is a symlink .* outside the directory being packed"):
        pack_directory(root)


def test_symlink_escaping_through_another_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write(tmp_path, "outside/secret.txt", "secret")
    os.symlink(tmp_path / "outside", root / "hop")
    write(root, ".gitignore", "hop\n")  # the first link is ignored ...
    os.symlink("hop/secret.txt", root / "via_hop")  # ... but this one still resolves outside
    with pytest.raises(PackingError, match="via_hop"):
        pack_directory(root)


def test_ignored_escaping_symlink_and_fifo_are_fine(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    write(tmp_path, ".ec2jobsignore", "escape\n*.fifo\n")
    os.symlink("/etc/passwd", tmp_path / "escape")
    os.mkfifo(tmp_path / "pipe.fifo")
    write(tmp_path, "ok.txt")
    assert files(pack(tmp_path)) == {".ec2jobsignore", "ok.txt"}


def test_fifo_is_refused_unless_ignored(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(PackingError, match="pipe is not a regular file"):
        pack_directory(tmp_path)


def test_failed_pack_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    root = tmp_path / "root"
    write(root, "a.txt")
    os.symlink("/etc/passwd", root / "z_escape")  # found after a.txt was already written
    with pytest.raises(PackingError):
        pack_directory(root)
    assert list(temp.iterdir()) == []


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PackingError, match="is not a directory"):
        pack_directory(tmp_path / "missing")


# -- mounts -----------------------------------------------------------------------------------------------------------


def _manifest(archive: PackedArchive) -> dict[str, object]:
    with tarfile.open(archive.path, "r:gz") as tar:
        first = tar.next()
        assert first is not None
        assert first.name == "manifest.json"
        handle = tar.extractfile(first)
        assert handle is not None
        return dict(json.load(io.TextIOWrapper(handle)))


def test_pack_mounts_lays_out_by_index_with_a_manifest(tmp_path: Path) -> None:
    write(tmp_path, "data/train.jsonl", '{"a": 1}\n')
    write(tmp_path, "models/.gitignore", "*.tmp\n")
    write(tmp_path, "models/base/config.json", "{}")
    write(tmp_path, "models/scratch.tmp")
    write(tmp_path, "models/.git/HEAD")
    mounts: dict[str, str | Path] = {
        "/data/train.jsonl": tmp_path / "data/train.jsonl",
        "/models": str(tmp_path / "models"),
    }
    with pack_mounts(mounts) as archive:
        manifest = _manifest(archive)
        assert manifest == {
            "format": 1,
            "mounts": {
                "0": {"remote_path": "/data/train.jsonl", "type": "file"},
                "1": {"remote_path": "/models", "type": "dir"},
            },
        }
        found = members(archive)
        assert found["mounts/0"].isfile()
        assert {name for name, member in found.items() if not member.isdir()} == {
            "manifest.json",
            "mounts/0",
            "mounts/1/.gitignore",
            "mounts/1/base/config.json",
        }
        assert archive.file_count == 3
        with tarfile.open(archive.path, "r:gz") as tar:
            handle = tar.extractfile("mounts/0")
            assert handle is not None
            assert handle.read() == b'{"a": 1}\n'
        path = archive.path
    assert not path.exists()  # the context manager removed it


def test_pack_mounts_is_deterministic_and_ordered_by_remote_path(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    write(tmp_path, "b.txt", "b")
    first = pack_mounts({"/z/b": tmp_path / "b.txt", "/a/a": tmp_path / "a.txt"})
    second = pack_mounts({"/a/a": tmp_path / "a.txt", "/z/b/": tmp_path / "b.txt"})
    try:
        assert first.sha256 == second.sha256
        assert _manifest(first)["mounts"] == {
            "0": {"remote_path": "/a/a", "type": "file"},
            "1": {"remote_path": "/z/b", "type": "file"},
        }
    finally:
        first.remove()
        second.remove()


@pytest.mark.parametrize(
    ("remote", "message"),
    [
        ("data/x", "absolute"),
        ("~data", "absolute"),
        ("~/../etc", r"'\.\.'"),
        ("~/", "not be /"),
        ("/data/../etc/passwd", r"'\.\.'"),
        ("/..", r"'\.\.'"),
        ("/", "not be /"),
        ("/a\x00b", "NUL"),
    ],
)
def test_pack_mounts_refuses_bad_remote_paths(tmp_path: Path, remote: str, message: str) -> None:
    write(tmp_path, "f")
    with pytest.raises(PackingError, match=message):
        pack_mounts({remote: tmp_path / "f"})


def test_pack_mounts_refuses_duplicates_and_missing_sources(tmp_path: Path) -> None:
    write(tmp_path, "f")
    with pytest.raises(PackingError, match="more than once"):
        pack_mounts({"/data/x": tmp_path / "f", "/data//x/": tmp_path / "f"})
    with pytest.raises(PackingError, match="does not exist"):
        pack_mounts({"/data/x": tmp_path / "missing"})


def test_remote_paths_are_normalised() -> None:
    assert check_remote_path("/data//./x/") == "/data/x"
    assert check_remote_path("//data") == "/data"


def test_mount_directory_symlink_must_stay_inside_that_mount(tmp_path: Path) -> None:
    write(tmp_path, "shared.txt")
    write(tmp_path, "mnt/a.txt")
    os.symlink("../shared.txt", tmp_path / "mnt" / "link")
    with pytest.raises(PackingError, match="link is a symlink"):
        pack_mounts({"/mnt": tmp_path / "mnt"})


def test_gzip_stream_is_valid(tmp_path: Path, pack: Callable[..., PackedArchive]) -> None:
    write(tmp_path, "a.txt", "hello")
    archive = pack(tmp_path)
    with gzip.open(archive.path) as handle:
        data = handle.read()
    assert len(data) % tarfile.RECORDSIZE == 0


def test_pack_mounts_keeps_home_relative_destinations(tmp_path: Path) -> None:
    """SkyPilot's `~/.kaggle/kaggle.json: ~/.kaggle/kaggle.json`: `~/` is the job user's home on the instance."""
    write(tmp_path, "f")
    assert check_remote_path("~/.kaggle//kaggle.json") == "~/.kaggle/kaggle.json"
    packed = pack_mounts({"~/.kaggle/kaggle.json": tmp_path / "f"})
    try:
        with tarfile.open(packed.path, "r:gz") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest["mounts"] == {"0": {"remote_path": "~/.kaggle/kaggle.json", "type": "file"}}
    finally:
        packed.remove()
