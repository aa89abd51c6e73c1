"""Build the Lambdas' dependency layer locally, without Docker: pip downloads manylinux x86_64 wheels for CPython
3.12 (the functions' runtime and architecture) into build/layer/python, the directory layout Lambda puts on
sys.path (/opt/python).

Then, so that it is small and quick to import:
- botocore's service data is kept only for the AWS services the code calls (BOTOCORE_SERVICES, the one list; a test
  fails when lambdas/ calls a service missing from it), and for each of them only the API version botocore loads;
- what nothing imports or reads at run time goes: the packages in UNUSED_PACKAGES (each with the reason it is never
  imported), the files in UNUSED_FILES, typing stubs (*.pyi, *-stubs), C sources and headers, and the dist-info
  RECORD files (pip's uninstall list; METADATA, entry points and licences stay);
- the shared libraries are stripped of their symbol tables and debug information (`strip --strip-unneeded`: what
  loading them needs, their dynamic symbols, stays), when this machine has `strip`; without it they ship as pip
  installed them (a notice says so);
- botocore's endpoints.json keeps only those services' entries (every partition and its defaults stay): every
  botocore session parses it, 1.3 MB of JSON, about 9 ms of each cold start;
- when this machine has a CPython 3.12, every module is compiled with it into __pycache__/*.cpython-312.pyc, which
  ship in the layer: /opt is read-only on Lambda, so without them every cold start compiles every import. Without a
  3.12 the layer is built without bytecode (a one-line notice says so; the build does not fail). The subpackages in
  NO_BYTECODE, which the control plane never imports (a test checks), keep their source but get no bytecode;
- a CPython (the 3.12, else this one) creates a boto3 client for each service from the finished layer alone; the
  3.12 also loads every extension module and paramiko.

A stamp (a hash of requirements.txt, the target platform, the services, what is removed, and whether the libraries
were stripped and bytecode compiled) skips the rebuild when nothing changed. The build goes to a temporary directory
first, so an interrupted or failed build never leaves a half layer behind that looks built.

    .venv/bin/python scripts/build_layer.py            # what `make layer` / `make synth` run
    .venv/bin/python scripts/build_layer.py --force    # rebuild even if the stamp matches
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
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
# Where a service's name and its key in endpoints.json (its model's endpointPrefix) differ.
ENDPOINT_PREFIXES = {"stepfunctions": "states"}
# Subpackages (ending in /) and modules of the dependencies that the control plane never imports: Pydantic's v1 API,
# experiments and mypy plugin, Powertools' utilities other than data classes, typing and JMESPath, and cryptography's
# X.509. They keep their source (an import would still work, compiling it), without bytecode: 0.8 MB of the zipped
# layer. tests/infra/test_build_layer.py imports every handler and wires every service, and fails if any of these
# is imported.
NO_BYTECODE = (
    "pydantic/v1/",
    "pydantic/experimental/",
    "pydantic/mypy.py",
    *(
        f"aws_lambda_powertools/utilities/{name}/"
        for name in (
            "auth_alpha",
            "batch",
            "circuit_breaker",
            "data_masking",
            "feature_flags",
            "idempotency",
            "kafka",
            "parameters",
            "parser",
            "streaming",
            "validation",
        )
    ),
    "cryptography/x509/",
)
# Dependencies pip installs that nothing imports at run time, and why; removed with their dist-info.
UNUSED_PACKAGES: dict[str, str] = {
    "invoke": "paramiko imports it only for ssh_config's `Match exec` (paramiko/config.py guards that import; "
    "without it only that directive fails); the control plane never reads an ssh_config. Importing it took "
    "about 40 ms of the relay's cold start",
    "cffi": "PyNaCl's bindings were generated with it when the wheel was built; at run time they load only "
    "_cffi_backend (a separate extension module, kept)",
    "pycparser": "cffi's C parser, for that same build step",
}
# Files of kept packages that nothing reads at run time.
UNUSED_FILES = (
    # Powertools' Swagger UI, served only by enable_swagger(), which the API does not call (it serves /openapi.json)
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js",
    "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui.min.css",
)
UNUSED_SUFFIXES = frozenset({".pyi", ".c", ".h"})  # typing stubs, C sources and headers
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
if sys.version_info[:2] == (3, 12):  # the runtime's version, which the extension modules are built for
    import importlib, pathlib
    site = pathlib.Path(sys.argv[1])
    for library in sorted(site.rglob("*.so")):  # every one loads, stripped
        parts = library.relative_to(site).parts
        importlib.import_module(".".join([*parts[:-1], library.name.split(".")[0]]))
    import paramiko  # without invoke
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


def no_bytecode_pattern(site: Path) -> str:
    """compileall's -x: the files under NO_BYTECODE, anchored at the site directory."""
    paths = "|".join(re.escape(p) if p.endswith("/") else re.escape(p) + "$" for p in NO_BYTECODE)
    return f"^{re.escape(str(site))}/({paths})"


def compile_arguments(python: str, site: Path) -> list[str]:
    """compileall with the runtime's interpreter. unchecked-hash: the .pyc is used as is, without comparing it to
    its source's mtime (which the zip and Lambda's unpacking do not keep: a timestamp .pyc would be recompiled on
    every cold start, and cannot be rewritten on read-only /opt). -s/-p: the bytecode names its files by their path on
    Lambda (/opt/python/…), not by the build machine's directory. -x: not NO_BYTECODE."""
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
        "-x",
        no_bytecode_pattern(site),
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


def trim_endpoints(site: Path, services: Iterable[str] = BOTOCORE_SERVICES) -> None:
    """Keep in botocore/data/endpoints.json only the listed services' entries, in every partition (the partitions,
    their regions and defaults stay whole)."""
    path = site / "botocore" / "data" / "endpoints.json"
    if not path.is_file():
        return
    endpoints = json.loads(path.read_text())
    wanted = {ENDPOINT_PREFIXES.get(service, service) for service in services}
    for partition in endpoints.get("partitions", []):
        partition["services"] = {k: v for k, v in partition.get("services", {}).items() if k in wanted}
    path.write_text(json.dumps(endpoints, indent=1) + "\n")


def remove_unused(site: Path) -> None:
    """Remove UNUSED_PACKAGES (and their dist-info), UNUSED_FILES, stubs, C sources, RECORD files, and directories
    left empty."""
    for name in UNUSED_PACKAGES:
        shutil.rmtree(site / name, ignore_errors=True)
        for info in site.glob("*.dist-info"):
            if info.name.split("-")[0].lower().replace("_", "-") == name:
                shutil.rmtree(info)
    for relative in UNUSED_FILES:
        (site / relative).unlink(missing_ok=True)
    for stubs in [d for d in site.glob("*-stubs") if d.is_dir()]:
        shutil.rmtree(stubs)
    for path in [p for p in site.rglob("*") if p.is_file()]:
        if path.suffix in UNUSED_SUFFIXES or (path.name == "RECORD" and path.parent.name.endswith(".dist-info")):
            path.unlink()
    for directory in sorted((d for d in site.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(directory.iterdir()):
            directory.rmdir()


def strip_tool() -> str | None:
    """binutils' strip, if this machine has it."""
    return shutil.which("strip")


def strip_arguments(strip: str, site: Path) -> list[str]:
    """--strip-unneeded: the symbol table and debug sections go; the dynamic symbols that loading an extension
    module needs (PyInit_*, its imports) stay."""
    return [strip, "--strip-unneeded", *(str(p) for p in sorted(site.rglob("*.so")))]


def bytecode_tag(python: str | None) -> str:
    return "cpython-312 bytecode" if python else "no bytecode"


def fingerprint(requirements: Path, python: str | None = None, stripped: bool = False) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{PLATFORM} {IMPLEMENTATION}{PYTHON_VERSION}".encode())
    digest.update(f" botocore data: {','.join(sorted(BOTOCORE_SERVICES))}; {bytecode_tag(python)}".encode())
    removed = [*sorted(UNUSED_PACKAGES), *UNUSED_FILES, *sorted(UNUSED_SUFFIXES), "*-stubs", "RECORD", "endpoints"]
    removed += [f"no bytecode: {path}" for path in NO_BYTECODE]
    digest.update(f"; removed: {','.join(removed)}; {'stripped' if stripped else 'not stripped'}".encode())
    return digest.hexdigest()


def is_current(layer_dir: Path, requirements: Path, python: str | None = None, stripped: bool | None = None) -> bool:
    """Whether the layer was built from these requirements, with this bytecode and stripping (None: as this
    machine would, i.e. stripped when it has `strip`)."""
    stamp = layer_dir / STAMP_NAME
    strip = strip_tool() is not None if stripped is None else stripped
    return (
        stamp.is_file()
        and (layer_dir / "python").is_dir()
        and stamp.read_text().strip() == fingerprint(requirements, python, strip)
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
    strip = strip_tool()
    if not force and is_current(layer_dir, requirements, python, strip is not None):
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
    trim_endpoints(site)
    remove_unused(site)
    if strip and any(site.rglob("*.so")):
        subprocess.run(strip_arguments(strip, site), check=True)
    if python:
        subprocess.run(compile_arguments(python, site), check=True)
    subprocess.run(verify_arguments(python or sys.executable, site), check=True, env={"PATH": os.defpath})
    (staging / STAMP_NAME).write_text(fingerprint(requirements, python, strip is not None) + "\n")
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
        step = (
            "pip"
            if "pip" in error.cmd
            else "compileall"
            if "compileall" in error.cmd
            else "strip"
            if "--strip-unneeded" in error.cmd
            else "the layer's check"
        )
        print(f"layer: {step} failed (exit {error.returncode}); nothing was changed", file=sys.stderr)
        return 1
    if strip_tool() is None:
        print("layer: no `strip` here (binutils): its shared libraries ship unstripped, about 2 MB more zipped")
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
