"""Build the Lambdas' dependency layer locally, without Docker: pip downloads manylinux x86_64 wheels for CPython
3.12 (the functions' runtime and architecture) into build/layer/python, the directory layout Lambda puts on
sys.path (/opt/python).

Then, so that it is small and quick to import:
- botocore's service data is kept only for the AWS services the code calls (BOTOCORE_SERVICES, the one list; a test
  fails when lambdas/ calls a service missing from it), and for each of them only the API version botocore loads;
- when this machine has a CPython 3.12, every module is compiled with it into __pycache__/*.cpython-312.pyc, which
  ship in the layer: /opt is read-only on Lambda, so without them every cold start compiles every import. Without a
  3.12 the layer is built without bytecode (a one-line notice says so; the build does not fail);
- a CPython (the 3.12, else this one) creates a boto3 client for each service from the finished layer alone.

A stamp (a hash of requirements.txt, the target platform, the services and whether bytecode was compiled) skips the
rebuild when nothing changed. The build goes to a temporary directory first, so an interrupted or failed build never
leaves a half layer behind that looks built.

    .venv/bin/python scripts/build_layer.py            # what `make layer` / `make synth` run
    .venv/bin/python scripts/build_layer.py --force    # rebuild even if the stamp matches
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements.txt"
LAYER_DIR = REPO / "build" / "layer"
STAMP_NAME = ".stamp"
# The Lambda runtime and architecture the stack deploys (stacks/functions.py); wheels must match them exactly.
PYTHON_VERSION = "3.12"
PLATFORM = "manylinux2014_x86_64"
IMPLEMENTATION = "cp"
# The AWS services the control plane's code makes clients for: client("…"), resource("…") and, with a provider's
# keys, clients("…") / provider_client("…") in lambdas/. botocore's data for every other service (about 430 of
# them, 60 % of the zipped layer) is left out. tests/infra/test_build_layer.py reads lambdas/ and fails when the code
# calls a service that is not here.
BOTOCORE_SERVICES = frozenset({"dynamodb", "ec2", "events", "iam", "s3", "secretsmanager", "stepfunctions", "sts"})
# Where the layer is mounted on Lambda: the path compiled into the bytecode (tracebacks), whatever the build path.
LAMBDA_LAYER_PATH = "/opt/python"
_IS_RUNTIME = "import sys; print(sys.implementation.name, *sys.version_info[:2], sys.version_info.releaselevel)"
_VERIFY = """
import sys
sys.path.insert(0, sys.argv[1])
import boto3
assert boto3.__file__.startswith(sys.argv[1]), boto3.__file__
session = boto3.session.Session(aws_access_key_id="layer", aws_secret_access_key="check", region_name="us-east-1")
for service in sys.argv[2:]:
    session.client(service)
session.resource("dynamodb")
"""


def pip_arguments(requirements: Path, target: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--quiet",  # twice: errors only (pip's index/mirror warnings are not the layer's business)
        "--disable-pip-version-check",
        "--no-compile",  # .pyc files of this interpreter would be useless on the 3.12 runtime (compiled below)
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


def python_candidates() -> list[str]:
    found = [shutil.which("python3.12"), "/usr/bin/python3.12", "/usr/local/bin/python3.12"]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    return list(dict.fromkeys(c for c in found if c))


def runtime_python(candidates: Iterable[str] | None = None) -> str | None:
    """A CPython 3.12 (a final release: its bytecode is the runtime's) that actually runs here, or None. A pyenv shim
    can be on PATH and still refuse to run, so each candidate is asked for its version."""
    for candidate in python_candidates() if candidates is None else candidates:
        try:
            answer = subprocess.run(
                [candidate, "-I", "-c", _IS_RUNTIME], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if answer.returncode == 0 and answer.stdout.split() == ["cpython", "3", "12", "final"]:
            return candidate
    return None


def compile_arguments(python: str, site: Path) -> list[str]:
    """compileall with the runtime's interpreter. unchecked-hash: the .pyc is used as is, without comparing it to
    its source's mtime (which the zip and Lambda's unpacking do not keep: a timestamp .pyc would be recompiled on
    every cold start, and cannot be rewritten on read-only /opt). -s/-p: the bytecode names its files by their path on
    Lambda (/opt/python/…), not by the build machine's directory."""
    return [
        python,
        "-I",
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        str(site),
        "-p",
        LAMBDA_LAYER_PATH,
        str(site),
    ]


def verify_arguments(python: str, site: Path, services: Iterable[str] = BOTOCORE_SERVICES) -> list[str]:
    """A client for each service, and the DynamoDB resource, from the layer alone (-I -S: no site-packages, no
    environment; -B: writes no bytecode into it). Creating a client makes no request."""
    return [python, "-I", "-S", "-B", "-c", _VERIFY, str(site), *sorted(services)]


def trim_botocore_data(site: Path, services: Iterable[str] = BOTOCORE_SERVICES) -> None:
    """Remove botocore/data/<service>/ for services not listed and, for those listed, every API version but the
    newest with a model: the one botocore loads when a client names no api_version (the code never does), along with
    that version's paginators, waiters and endpoint rules. The shared files at the top of botocore/data
    (endpoints.json, partitions.json, _retry.json, …) and boto3/data (the DynamoDB resource) stay."""
    data = site / "botocore" / "data"
    if not data.is_dir():
        return
    wanted = set(services)
    missing = wanted - {entry.name for entry in data.iterdir() if entry.is_dir()}
    if missing:
        raise ValueError(f"botocore has no data for {', '.join(sorted(missing))}: check BOTOCORE_SERVICES")
    for service in [entry for entry in data.iterdir() if entry.is_dir()]:
        if service.name not in wanted:
            shutil.rmtree(service)
            continue
        versions = [v for v in service.iterdir() if v.is_dir()]
        newest = max((v.name for v in versions if any(v.glob("service-2.json*"))), default=None)
        for version in versions:
            if version.name != newest:
                shutil.rmtree(version)


def bytecode_tag(python: str | None) -> str:
    return "cpython-312 bytecode" if python else "no bytecode"


def fingerprint(requirements: Path, python: str | None = None) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{PLATFORM} {IMPLEMENTATION}{PYTHON_VERSION}".encode())
    digest.update(f" botocore data: {','.join(sorted(BOTOCORE_SERVICES))}; {bytecode_tag(python)}".encode())
    return digest.hexdigest()


def is_current(layer_dir: Path, requirements: Path, python: str | None = None) -> bool:
    stamp = layer_dir / STAMP_NAME
    return (
        stamp.is_file()
        and (layer_dir / "python").is_dir()
        and stamp.read_text().strip() == fingerprint(requirements, python)
    )


def build(
    layer_dir: Path = LAYER_DIR,
    requirements: Path = REQUIREMENTS,
    *,
    force: bool = False,
    python: str | None = None,
    find_python: bool = True,
) -> bool:
    """Build the layer unless it is current. Returns True if it was (re)built. `python`: the CPython 3.12 that
    compiles the bytecode (found with runtime_python() unless given or find_python=False; None: no bytecode)."""
    if python is None and find_python:
        python = runtime_python()
    if not force and is_current(layer_dir, requirements, python):
        return False
    staging = layer_dir.with_name(layer_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    site = staging / "python"
    site.mkdir(parents=True)
    subprocess.run(pip_arguments(requirements, site), check=True)
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: no use in a layer
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    trim_botocore_data(site)
    if python:
        subprocess.run(compile_arguments(python, site), check=True)
    subprocess.run(verify_arguments(python or sys.executable, site), check=True, env={"PATH": os.defpath})
    (staging / STAMP_NAME).write_text(fingerprint(requirements, python) + "\n")
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
    python = runtime_python()
    try:
        built = build(args.out, force=args.force, python=python, find_python=False)
    except subprocess.CalledProcessError as error:
        step = "pip" if "pip" in error.cmd else "compileall" if "compileall" in error.cmd else "the layer's check"
        print(f"layer: {step} failed (exit {error.returncode}); nothing was changed", file=sys.stderr)
        return 1
    if python is None:
        print(
            "layer: no CPython 3.12 here (python3.12 on PATH, /usr/bin, /usr/local/bin, ~/.pyenv): built without "
            "bytecode, so each cold start compiles its imports; install python3.12 and rerun `make layer` to ship it"
        )
    state = "built" if built else "up to date"
    print(
        f"layer: {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} {state} "
        f"({size_mb(args.out / 'python'):.0f} MB, CPython {PYTHON_VERSION} {PLATFORM}, botocore data for "
        f"{len(BOTOCORE_SERVICES)} services, {bytecode_tag(python)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
