"""Cold start: each handler module's import time in a fresh interpreter, as Lambda would run it — CPython 3.12 (the
deployed runtime), the code asset and the dependency layer on sys.path and nothing else, the function's environment
(stacks/functions.py's variables; ARTIFACTS_ENV for the API and the relay, as the stack sets it), and the bytecode
that ships: the layer's own __pycache__/*.cpython-312.pyc (scripts/build_layer.py compiles them when the build
machine has a CPython 3.12) and the code asset's, built by the synth's own function (stacks/asset_bundling.py
build_code_asset, with the same CPython 3.12). /var/task and /opt are read-only, so whatever has no .pyc is compiled
on every cold start (the probe runs with -B: nothing is written). Also the deployable sizes of the code asset (that
build, zipped) and of the layer (build/layer zipped, bytecode included; unzipped size reported too).

Also measured, reported only: the same imports with the code asset as source (a synth without a CPython 3.12) and
with no bytecode at all (neither the layer nor the asset compiled), and "import + wiring", the handler plus what its
first invocation builds (services, boto3 clients) and imports (FIRST_CALL_IMPORTS). The relay's target applies to a
relay shard's first call: handlers.relay_shard, relay_shard.wire() (what its first tick uses: the relay's service,
the fleet's store and its DynamoDB and Step Functions clients; the clients only a job loop uses, Secrets Manager,
EventBridge, S3 and STS, are made at their first use) and paramiko, which adapters/ssh.py imports at a job's first
connect. The first tick's own request (one GetItem, ~7 ms against a local stub) is not in it. Alongside it, paired,
the same call's dependencies alone (every module it imports but the control plane's, and its two clients): the floor
that no change to lambdas/ goes below (details.relay_dependencies; docs/cold-start.md).

    python -m bench.coldstart [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import Figure

SECTION = "3 cold start"
REPO = Path(__file__).resolve().parent.parent
LAMBDAS = REPO / "lambdas"
LAYER = REPO / "build" / "layer"
IMPORT_TARGET_MS = 150.0
RELAY_TARGET_MS = 350.0
SIZE_TARGET_MB = 15.0
# handler module → the container function its first invocation calls (what it wires up)
HANDLERS: dict[str, str] = {
    "controlplane.handlers.api": "get",
    "controlplane.handlers.authorizer": "get",
    "controlplane.handlers.workflow": "pipeline",
    "controlplane.handlers.events": "instance_events",
    "controlplane.handlers.reconcile": "reconciler",
    # a relay shard (docs/relay-fleet.md): what its first tick uses (the relay's service, the fleet's store and
    # Step Functions client), not the other workflow steps' services
    "controlplane.handlers.relay_shard": "controlplane.handlers.relay_shard:wire",
}
# What a handler's first invocation imports beyond its wiring: a relay shard's first connect imports paramiko (and
# cryptography, PyNaCl, bcrypt), which the wiring leaves to it (adapters/ssh.py), so the relay's figure counts it.
FIRST_CALL_IMPORTS: dict[str, tuple[str, ...]] = {"controlplane.handlers.relay_shard": ("paramiko",)}
# The variables stacks/functions.py (use_artifacts) sets on the functions with access to the artifacts bucket: the
# API and a relay shard (the workflow steps, the authorizer, instance events and the reconciler have none). With them
# the wiring also makes the S3 client (and the relay's and the API's STS client for instance grants), as deployed.
ARTIFACTS_ENV = {
    "ARTIFACT_BUCKET": "ec2jobs-artifacts-123456789012-us-east-1",
    "INSTANCE_TRANSFER_ROLE_ARN": "arn:aws:iam::123456789012:role/ec2jobs-instance-transfer",
}
WITH_ARTIFACTS = frozenset({"controlplane.handlers.api", "controlplane.handlers.relay_shard"})
_PROBE = """
import importlib, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
imported = time.perf_counter()
if sys.argv[2]:
    module, _, function = sys.argv[2].rpartition(":")
    getattr(importlib.import_module(module or "controlplane.handlers.container"), function)()
for name in sys.argv[3:]:
    importlib.import_module(name)
print(imported - started, time.perf_counter() - started)
"""
# The relay's first call less the control plane's own work: the modules that call imports other than its own
# (listed by _LIST_PROBE, imported here in the order they were) and the clients its wiring makes (DEPENDENCY_CLIENTS),
# from one boto3 Session. What no change to lambdas/ can go below: the layer's packages' and the stdlib's imports.
_LIST_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
module, _, function = sys.argv[2].rpartition(":")
getattr(importlib.import_module(module or "controlplane.handlers.container"), function)()
for name in sys.argv[3:]:
    importlib.import_module(name)
print(json.dumps([m for m in sys.modules if m.split(".")[0] not in {"controlplane", "__main__"}]))
"""
_DEPENDENCIES_PROBE = """
import importlib, json, os, sys, time
names = json.loads(sys.argv[1])
started = time.perf_counter()
for name in names:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # a module that a package only tried (an optional dependency): as in the first call
import boto3
session = boto3.session.Session()
for kind, service in json.loads(sys.argv[2]):
    getattr(session, kind)(service, region_name=os.environ.get("AWS_REGION") or "us-east-1")
print(time.perf_counter() - started)
"""
# What relay_shard.wire() makes (controlplane/adapters/aws.py): the DynamoDB resource and the Step Functions client.
DEPENDENCY_CLIENTS = (("resource", "dynamodb"), ("client", "stepfunctions"))
RELAY = "controlplane.handlers.relay_shard"


def asset_excluded(path: Path) -> bool:
    """What the code asset leaves out of lambdas/ (stacks/asset_bundling.py: the build machine's __pycache__ and
    *.pyc, *.egg-info); its own bytecode is compiled after. Applied to lambdas/, the asset a synth without a CPython
    3.12 ships."""
    from stacks import asset_bundling

    return asset_bundling.source_excluded(path)


def nothing_excluded(path: Path) -> bool:
    """The built code asset ships whole."""
    return False


def layer_excluded(path: Path) -> bool:
    """What CDK's asset for build/layer leaves out (stacks/functions.py): the stamp only; its bytecode ships."""
    return path.as_posix() == ".stamp"


def zipped_size(root: Path, excluded: Callable[[Path], bool]) -> tuple[int, int, int]:
    """(zipped bytes, unzipped bytes, zipped bytes of the .pyc files in it) of a directory as a deflate-compressed
    asset zip; `excluded` takes paths relative to root."""
    buffer = io.BytesIO()
    unzipped = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or excluded(relative):
                continue
            archive.write(path, relative.as_posix())
            unzipped += path.stat().st_size
        bytecode = sum(i.compress_size for i in archive.infolist() if i.filename.endswith(".pyc"))
    return len(buffer.getvalue()), unzipped, bytecode


def _build_layer() -> Any:
    from stacks import asset_bundling  # CDK is imported only where needed

    return asset_bundling.build_layer_module()


def ensure_layer() -> str:
    """Build the layer if it is missing or stale (pip, PyPI); '' when it is ready, else why not."""
    try:
        _build_layer().build(LAYER)
    except (subprocess.CalledProcessError, OSError, ValueError) as error:
        return f"the layer could not be built ({type(error).__name__}); run `make layer`"
    return ""


def runtime_python() -> str | None:
    """The CPython 3.12 (the Lambda runtime's version) that the layer's build uses, if this machine has one."""
    python: str | None = _build_layer().runtime_python()
    return python


def layer_bytecode(layer: Path) -> int:
    """How many CPython 3.12 .pyc files the built layer holds."""
    return sum(1 for _ in (layer / "python").rglob("__pycache__/*.cpython-312.pyc"))


def _environment(task: Path, layer: Path) -> dict[str, str]:
    from local import guard
    from stacks import functions

    stack = functions.POWERTOOLS | functions.PYDANTIC  # the variables every function has, as the stack sets them
    return (
        guard.isolated_aws_environment("http://127.0.0.1:9")
        | stack
        | {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": f"{task}{os.pathsep}{layer}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "AWS_LAMBDA_FUNCTION_NAME": "ec2jobs-bench",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            "LAMBDA_TASK_ROOT": str(task),
            "STATE_TABLE": "ec2jobs-state",
            "JOBS_TABLE": "ec2jobs-jobs",
            "LOGS_TABLE": "ec2jobs-logs",
            "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:ec2jobs-jobs",
            "EVENT_BUS_NAME": "ec2jobs-bus",
        }
    )


def _probe(python: str, module: str, wire: str, env: dict[str, str], cache: Path | None) -> tuple[float, float]:
    """(import seconds, import + wiring seconds) in a fresh interpreter that writes no bytecode (-B), as on Lambda.
    cache=None: it reads the bytecode that ships (the layer's and the code asset's __pycache__). Else it reads
    bytecode only from under `cache` (PYTHONPYCACHEPREFIX): an empty directory means none at all."""
    flags = ["-S"] if python != sys.executable else []
    command = [python, *flags, "-B", "-c", _PROBE, module, wire, *FIRST_CALL_IMPORTS.get(module, ())]
    environment = dict(env)
    if cache is not None:
        environment["PYTHONPYCACHEPREFIX"] = str(cache)
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"importing {module} failed: {result.stderr.strip().splitlines()[-1:]}")
    imported, wired = result.stdout.split()
    return float(imported), float(wired)


def _relay_floor(python: str, env: dict[str, str], repeats: int) -> dict[str, float]:
    """The relay's first call (as deployed) and the same call's dependencies alone (_DEPENDENCIES_PROBE), alternating,
    median of `repeats` each, in ms."""
    flags = ["-S"] if python != sys.executable else []
    wire, extra = HANDLERS[RELAY], FIRST_CALL_IMPORTS.get(RELAY, ())
    listed = subprocess.run(  # noqa: S603
        [python, *flags, "-B", "-c", _LIST_PROBE, RELAY, wire, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    names = listed.stdout.strip().splitlines()[-1]
    clients = json.dumps(DEPENDENCY_CLIENTS)
    relay: list[float] = []
    floor: list[float] = []
    for _ in range(repeats):
        relay.append(_probe(python, RELAY, wire, env, None)[1])
        result = subprocess.run(  # noqa: S603
            [python, *flags, "-B", "-c", _DEPENDENCIES_PROBE, names, clients],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        floor.append(float(result.stdout.split()[-1]))
    return {
        "first_call_ms": round(statistics.median(relay) * 1000, 1),
        "dependencies_alone_ms": round(statistics.median(floor) * 1000, 1),
        "modules": len(json.loads(names)),
    }


def _importtime_top(python: str, module: str, env: dict[str, str], top: int = 5) -> dict[str, float]:
    """Where a cold import's time goes: -X importtime self times summed per top-level package, in ms."""
    flags = ["-S"] if python != sys.executable else []
    result = subprocess.run(  # noqa: S603
        [python, *flags, "-B", "-X", "importtime", "-c", f"import {module}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return importtime_by_package(result.stderr, top)


def importtime_by_package(stderr: str, top: int = 5) -> dict[str, float]:
    """Parse `-X importtime` output: self µs per top-level package, the largest `top`, in ms."""
    totals: dict[str, int] = {}
    for line in stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        root = parts[2].strip().split(".")[0]
        totals[root] = totals.get(root, 0) + int(parts[0].strip())
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {name: round(us / 1000, 1) for name, us in ranked}


# timings' key suffix → what bytecode the interpreter finds (it writes none, like Lambda's read-only /var/task, /opt)
MODES = {
    "": "as deployed: the layer's and the code asset's CPython 3.12 bytecode (stacks/asset_bundling.py)",
    "_asset_source": "the code asset as source (a synth without a CPython 3.12), the layer's bytecode",
    "_no_bytecode": "no bytecode at all (the layer and the asset built without a CPython 3.12)",
}


def run(repeats: int = 3) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    problem = ensure_layer()
    python = runtime_python()
    from stacks import asset_bundling

    with tempfile.TemporaryDirectory(prefix="ec2jobs-coldstart-") as tmp:
        deployed, source_only = Path(tmp) / "task", Path(tmp) / "task-source"
        if python and not problem:
            site = LAYER / "python"
            details["interpreter"] = f"{python} (CPython 3.12, the Lambda runtime's version) with the layer"
            details["layer_bytecode_files"] = layer_bytecode(LAYER)
        else:
            python = None  # fall back: this venv's interpreter and packages (same pins), labelled as such
            site = Path(next(p for p in sys.path if p.endswith("site-packages")))
            fallback = f"no CPython 3.12 or no layer: {problem}"
            details["interpreter"] = f"{sys.executable} with the venv's packages ({fallback})"
        # the code asset as the synth builds it (compiled by the 3.12 when there is one), and as source
        details["code_asset_compiled"] = asset_bundling.build_code_asset(deployed, python)
        asset_bundling.build_code_asset(source_only, None)
        interpreter = python or sys.executable
        empty = Path(tmp) / "no-bytecode"
        empty.mkdir()
        variants: dict[str, tuple[Path, Path | None]] = {
            "": (deployed, None),
            "_asset_source": (source_only, None),
            "_no_bytecode": (deployed, empty),
        }
        timings: dict[str, dict[str, float]] = {}
        for module, wire in HANDLERS.items():
            extra = ARTIFACTS_ENV if module in WITH_ARTIFACTS else {}
            envs = {mode: _environment(task, site) | extra for mode, (task, _) in variants.items()}
            samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
            for _ in range(repeats):  # the modes alternate, so drift on this shared machine hits them alike
                for mode, (_, cache) in variants.items():
                    samples[mode].append(_probe(interpreter, module, wire, envs[mode], cache))
            timings[module] = {}
            for mode, runs in samples.items():
                timings[module][f"import{mode}_ms"] = statistics.median(r[0] for r in runs) * 1000
                timings[module][f"wired{mode}_ms"] = statistics.median(r[1] for r in runs) * 1000
            details.setdefault("import_ms_by_package", {})[module] = _importtime_top(interpreter, module, envs[""])
            if module == RELAY:
                details["relay_dependencies"] = _relay_floor(interpreter, envs[""], repeats)
        details["timings_ms"] = {m: {k: round(v, 1) for k, v in t.items()} for m, t in timings.items()}
        details["modes"] = {f"import{k}_ms, wired{k}_ms": v for k, v in MODES.items()}
        code_zip, code_raw, code_pyc = zipped_size(deployed, nothing_excluded)
    source_zip, _, _ = zipped_size(LAMBDAS, asset_excluded)
    for module, timing in timings.items():
        short = module.rsplit(".", 1)[-1]
        figures.append(
            Figure(
                SECTION,
                f"import handlers.{short} (as deployed, fresh interpreter)",
                timing["import_ms"],
                "ms",
                ("<=", IMPORT_TARGET_MS),
                f"asset as source {timing['import_asset_source_ms']:.0f} ms; no bytecode "
                f"{timing['import_no_bytecode_ms']:.0f} ms; + wiring {timing['wired_ms']:.0f} ms",
            )
        )
    relay = timings[RELAY]
    floor = details["relay_dependencies"]
    figures.append(
        Figure(
            SECTION,
            "relay shard's first call: handlers.relay_shard + its first tick's wiring + paramiko",
            relay["wired_ms"],
            "ms",
            ("<=", RELAY_TARGET_MS),
            f"asset as source {relay['wired_asset_source_ms']:.0f} ms; no bytecode "
            f"{relay['wired_no_bytecode_ms']:.0f} ms; its dependencies' imports and its two clients alone "
            f"{floor['dependencies_alone_ms']:.0f} ms of {floor['first_call_ms']:.0f} (paired)",
        )
    )
    details["code_asset"] = {
        "zipped_bytes": code_zip,
        "unzipped_bytes": code_raw,
        "bytecode_zipped_bytes": code_pyc,
        "as_source_zipped_bytes": source_zip,
    }
    figures.append(
        Figure(
            SECTION,
            "code asset (lambdas/ as the synth builds it, zipped)",
            code_zip / 1e6,
            "MB",
            note=f"its CPython 3.12 bytecode {code_pyc / 1e6:.2f} MB; as source {source_zip / 1e6:.2f} MB",
        )
    )
    if (LAYER / "python").is_dir():
        layer_zip, layer_raw, layer_pyc = zipped_size(LAYER, layer_excluded)
        services = sorted(_build_layer().BOTOCORE_SERVICES)
        details["layer"] = {
            "zipped_bytes": layer_zip,
            "unzipped_bytes": layer_raw,
            "bytecode_zipped_bytes": layer_pyc,
            "largest_mb": _largest(LAYER),
            "botocore_services": services,
        }
        figures += [
            Figure(
                SECTION,
                "layer (build/layer, zipped)",
                layer_zip / 1e6,
                "MB",
                note=f"its CPython 3.12 bytecode {layer_pyc / 1e6:.1f} MB; botocore data of {len(services)} services",
            ),
            Figure(
                SECTION,
                "code asset + layer, zipped",
                (code_zip + layer_zip) / 1e6,
                "MB",
                ("<=", SIZE_TARGET_MB),
                f"{(code_zip + layer_zip - code_pyc - layer_pyc) / 1e6:.1f} MB without bytecode",
            ),
            Figure(SECTION, "layer unzipped", layer_raw / 1e6, "MB", note="Lambda's limit: 250 MB unzipped"),
        ]
    else:
        details["layer"] = {"missing": problem or "build/layer/python is missing"}
        figures.append(Figure(SECTION, "code asset + layer, zipped", None, "MB", ("<=", SIZE_TARGET_MB), problem))
    return figures, details


def _largest(layer: Path, top: int = 6) -> dict[str, float]:
    sizes: dict[str, float] = {}
    for entry in (layer / "python").iterdir():
        if entry.name.endswith(".dist-info"):
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(f.stat().st_size for f in files) / 1e6
    return {name: round(size, 1) for name, size in sorted(sizes.items(), key=lambda item: -item[1])[:top]}


def main(argv: list[str] | None = None) -> None:
    from bench import __main__ as entry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    entry.main(["--only", "coldstart", "--repeats", str(args.repeats)])


if __name__ == "__main__":
    main()
