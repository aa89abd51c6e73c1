"""Build the Lambdas' dependency layer locally, without Docker: pip downloads manylinux x86_64 wheels for CPython
3.12 (the functions' runtime and architecture) into build/layer/python, the directory layout Lambda puts on
sys.path (/opt/python).

A stamp (a hash of requirements.txt and of the target platform) skips the rebuild when nothing changed. The build
goes to a temporary directory first, so an interrupted download never leaves a half layer behind that looks built.

    .venv/bin/python scripts/build_layer.py            # what `make layer` / `make synth` run
    .venv/bin/python scripts/build_layer.py --force    # rebuild even if the stamp matches
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements.txt"
LAYER_DIR = REPO / "build" / "layer"
STAMP_NAME = ".stamp"
# The Lambda runtime and architecture the stack deploys (stacks/functions.py); wheels must match them exactly.
PYTHON_VERSION = "3.12"
PLATFORM = "manylinux2014_x86_64"
IMPLEMENTATION = "cp"


def pip_arguments(requirements: Path, target: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--quiet",  # twice: errors only (pip's index/mirror warnings are not the layer's business)
        "--disable-pip-version-check",
        "--no-compile",  # .pyc files of this interpreter would be useless (and stale) on the 3.12 runtime
        "--platform",
        PLATFORM,
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        IMPLEMENTATION,
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]


def fingerprint(requirements: Path) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{PLATFORM} {IMPLEMENTATION}{PYTHON_VERSION}".encode())
    return digest.hexdigest()


def is_current(layer_dir: Path, requirements: Path) -> bool:
    stamp = layer_dir / STAMP_NAME
    return (
        stamp.is_file() and (layer_dir / "python").is_dir() and stamp.read_text().strip() == fingerprint(requirements)
    )


def build(layer_dir: Path = LAYER_DIR, requirements: Path = REQUIREMENTS, *, force: bool = False) -> bool:
    """Build the layer unless it is current. Returns True if it was (re)built."""
    if not force and is_current(layer_dir, requirements):
        return False
    staging = layer_dir.with_name(layer_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "python").mkdir(parents=True)
    subprocess.run(pip_arguments(requirements, staging / "python"), check=True)
    shutil.rmtree(staging / "python" / "bin", ignore_errors=True)  # console scripts: no use in a layer
    for cache in (staging / "python").rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    (staging / STAMP_NAME).write_text(fingerprint(requirements) + "\n")
    shutil.rmtree(layer_dir, ignore_errors=True)
    staging.rename(layer_dir)
    return True


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if requirements.txt did not change")
    parser.add_argument("--out", type=Path, default=LAYER_DIR, help=f"layer directory (default {LAYER_DIR})")
    args = parser.parse_args(argv)
    try:
        built = build(args.out, force=args.force)
    except subprocess.CalledProcessError as error:
        print(f"layer: pip failed (exit {error.returncode}); nothing was changed", file=sys.stderr)
        return 1
    state = "built" if built else "up to date"
    print(
        f"layer: {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} {state} "
        f"({size_mb(args.out / 'python'):.0f} MB, CPython {PYTHON_VERSION} {PLATFORM})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
