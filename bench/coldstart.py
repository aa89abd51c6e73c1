"""Cold start: each handler module's import time in a fresh interpreter, as Lambda would run it — CPython 3.12 (the
deployed runtime), the code asset and the dependency layer on sys.path and nothing else, no bytecode (the asset
ships none and the layer is built with --no-compile, so every cold start compiles them) — and the deployable sizes
of the code asset (lambdas/ zipped as CDK ships it) and the layer (build/layer zipped; unzipped size reported too).

Also measured, reported only: the same imports with bytecode present (what shipping .pyc files would give) and
"import + wiring", the handler plus what its first invocation builds (services, boto3 clients, paramiko for the
workflow). The relay's target applies to the workflow module plus its wiring (the relay step imports paramiko).

    python -m bench.coldstart [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import os
import re
import shutil
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
}
_PROBE = """
import importlib, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
imported = time.perf_counter()
if sys.argv[2]:
    from controlplane.handlers import container
    getattr(container, sys.argv[2])()
print(imported - started, time.perf_counter() - started)
"""


def _excluded(path: Path) -> bool:
    """What CDK's asset for lambdas/ leaves out (stacks/functions.py: __pycache__, *.pyc, *.egg-info)."""
    return "__pycache__" in path.parts or path.suffix == ".pyc" or any(p.endswith(".egg-info") for p in path.parts)


def zipped_size(
    root: Path, skip: set[str] | None = None, keep: Callable[[Path], bool] | None = None
) -> tuple[int, int]:
    """(zipped bytes, unzipped bytes) of a directory as a deflate-compressed asset zip."""
    buffer = io.BytesIO()
    unzipped = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or _excluded(relative) or (skip and relative.name in skip):
                continue
            if keep is not None and not keep(relative):
                continue
            archive.write(path, relative.as_posix())
            unzipped += path.stat().st_size
    return len(buffer.getvalue()), unzipped


def services_called() -> set[str]:
    """The AWS services the control plane's code makes clients for (client("…"), resource("…"), clients("…"))."""
    pattern = re.compile(r'(?:client|resource|clients)\(\s*"([a-z0-9-]+)"')
    return {m for path in (LAMBDAS / "controlplane").rglob("*.py") for m in pattern.findall(path.read_text())}


def _only_called_services(services: set[str]) -> Callable[[Path], bool]:
    """Keep everything but botocore's data for services the code never calls."""

    def keep(relative: Path) -> bool:
        parts = relative.parts
        is_service_data = len(parts) > 4 and parts[1:3] == ("botocore", "data")  # python/botocore/data/<service>/…
        return not is_service_data or parts[3] in services

    return keep


def ensure_layer() -> str:
    """Build the layer if it is missing or stale (pip, PyPI); '' when it is ready, else why not."""
    spec = importlib.util.spec_from_file_location("build_layer", REPO / "scripts" / "build_layer.py")
    if spec is None or spec.loader is None:
        return "scripts/build_layer.py not found"
    build_layer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_layer)
    try:
        build_layer.build(LAYER)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"the layer could not be built ({type(error).__name__}); run `make layer`"
    return ""


def runtime_python() -> str | None:
    """A CPython 3.12 interpreter (the Lambda runtime's version), if this machine has one."""
    candidates = ["/usr/bin/python3.12", "/usr/local/bin/python3.12"]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    found = shutil.which("python3.12")
    if found and "/shims/" not in found:  # a pyenv shim may refuse to run outside its version's scope
        candidates.insert(0, found)
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def _environment(task: Path, layer: Path) -> dict[str, str]:
    from local import guard

    return guard.isolated_aws_environment("http://127.0.0.1:9") | {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{task}{os.pathsep}{layer}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        "AWS_LAMBDA_FUNCTION_NAME": "ec2jobs-bench",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
        "LAMBDA_TASK_ROOT": str(task),
        "POWERTOOLS_SERVICE_NAME": "ec2jobs",
        "POWERTOOLS_METRICS_NAMESPACE": "ec2jobs",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "STATE_TABLE": "ec2jobs-state",
        "JOBS_TABLE": "ec2jobs-jobs",
        "LOGS_TABLE": "ec2jobs-logs",
        "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:ec2jobs-jobs",
        "EVENT_BUS_NAME": "ec2jobs-bus",
    }


def _probe(python: str, module: str, wire: str, env: dict[str, str], cache: Path | None) -> tuple[float, float]:
    """(import seconds, import + wiring seconds) in a fresh interpreter. cache=None: no bytecode at all."""
    flags = ["-S"] if python != sys.executable else []
    command = [python, *flags, "-c", _PROBE, module, wire]
    environment = dict(env)
    if cache is None:
        command.insert(1, "-B")
    else:
        environment.pop("PYTHONDONTWRITEBYTECODE")
        environment["PYTHONPYCACHEPREFIX"] = str(cache)
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"importing {module} failed: {result.stderr.strip().splitlines()[-1:]}")
    imported, wired = result.stdout.split()
    return float(imported), float(wired)


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


def run(repeats: int = 3) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    problem = ensure_layer()
    python = runtime_python()
    with tempfile.TemporaryDirectory(prefix="ec2jobs-coldstart-") as tmp:
        task = Path(tmp) / "task"
        shutil.copytree(LAMBDAS, task, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        if python and not problem:
            env = _environment(task, LAYER / "python")
            details["interpreter"] = f"{python} (CPython 3.12, the Lambda runtime's version) with the layer"
        else:
            python = sys.executable  # fall back: this venv's packages (same pins), labelled as such
            env = _environment(task, Path(next(p for p in sys.path if p.endswith("site-packages"))))
            details["interpreter"] = f"{python} with the venv's packages (no CPython 3.12 or no layer: {problem})"
        timings: dict[str, dict[str, float]] = {}
        for module, wire in HANDLERS.items():
            cold = [_probe(python, module, wire, env, None) for _ in range(repeats)]
            cache = Path(tmp) / "pycache"
            _probe(python, module, wire, env, cache)  # writes the bytecode
            warm = [_probe(python, module, wire, env, cache) for _ in range(repeats)]
            timings[module] = {
                "import_ms": statistics.median(c[0] for c in cold) * 1000,
                "wired_ms": statistics.median(c[1] for c in cold) * 1000,
                "import_with_bytecode_ms": statistics.median(w[0] for w in warm) * 1000,
                "wired_with_bytecode_ms": statistics.median(w[1] for w in warm) * 1000,
            }
            details.setdefault("import_ms_by_package", {})[module] = _importtime_top(python, module, env)
        details["timings_ms"] = {m: {k: round(v, 1) for k, v in t.items()} for m, t in timings.items()}
    for module, timing in timings.items():
        short = module.rsplit(".", 1)[-1]
        figures.append(
            Figure(
                SECTION,
                f"import handlers.{short} (no bytecode, fresh interpreter)",
                timing["import_ms"],
                "ms",
                ("<=", IMPORT_TARGET_MS),
                f"with .pyc {timing['import_with_bytecode_ms']:.0f} ms; + wiring {timing['wired_ms']:.0f} ms",
            )
        )
    relay = timings["controlplane.handlers.workflow"]
    figures.append(
        Figure(
            SECTION,
            "relay step: handlers.workflow + its wiring (paramiko, clients)",
            relay["wired_ms"],
            "ms",
            ("<=", RELAY_TARGET_MS),
            f"with .pyc {relay['wired_with_bytecode_ms']:.0f} ms",
        )
    )
    code_zip, code_raw = zipped_size(LAMBDAS)
    details["code_asset"] = {"zipped_bytes": code_zip, "unzipped_bytes": code_raw}
    figures.append(Figure(SECTION, "code asset (lambdas/, zipped)", code_zip / 1e6, "MB"))
    if (LAYER / "python").is_dir():
        layer_zip, layer_raw = zipped_size(LAYER, skip={".stamp"})
        services = services_called()
        trimmed, _ = zipped_size(LAYER, skip={".stamp"}, keep=_only_called_services(services))
        details["layer"] = {
            "zipped_bytes": layer_zip,
            "unzipped_bytes": layer_raw,
            "largest_mb": _largest(LAYER),
            "services_called": sorted(services),
            "zipped_bytes_with_only_called_services_botocore_data": trimmed,
        }
        figures += [
            Figure(SECTION, "layer (build/layer, zipped)", layer_zip / 1e6, "MB"),
            Figure(
                SECTION,
                "code asset + layer, zipped",
                (code_zip + layer_zip) / 1e6,
                "MB",
                ("<=", SIZE_TARGET_MB),
                f"{(code_zip + trimmed) / 1e6:.1f} MB if botocore kept only the {len(services)} services' data",
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
