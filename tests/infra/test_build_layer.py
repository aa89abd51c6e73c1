"""scripts/build_layer.py: the pip command (manylinux x86_64 wheels for CPython 3.12, no Docker), botocore's data
and endpoints trimmed to the services lambdas/ calls (and a check that the list still covers the code), what nothing
imports at run time removed, the shared libraries stripped, bytecode compiled by a CPython 3.12 when there is one
(and a build without it when there is none) except for NO_BYTECODE (which a check runs the control plane against),
the stamp that skips an unchanged rebuild, and that a failed build leaves the previous layer alone. pip, strip,
compileall and the check are faked here, except in the last tests, which use the real layer when it was built."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_layer", REPO / "scripts" / "build_layer.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_layer = _load()
PYTHON312 = "/opt/fake/bin/python3.12"
STRIP = "/opt/fake/bin/strip"


def _fake_botocore(site: Path, services: set[str]) -> None:
    """botocore/data as pip installs it: shared files, and per service API versions (the older ones may lack a
    model), plus boto3/data."""
    data = site / "botocore" / "data"
    for name in ("endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("{}")
    for service in services:
        for version in ("2011-01-01", "2016-11-15"):
            (data / service / version).mkdir(parents=True)
            (data / service / version / "service-2.json.gz").write_bytes(b"model")
            (data / service / version / "paginators-1.json").write_text("{}")
        (data / service / "2009-01-01").mkdir()
        (data / service / "2009-01-01" / "endpoint-rule-set-1.json.gz").write_bytes(b"rules")
    (site / "boto3" / "data" / "dynamodb" / "2012-08-10").mkdir(parents=True)
    (site / "boto3" / "data" / "dynamodb" / "2012-08-10" / "resources-1.json").write_text("{}")


class FakeRun:
    """subprocess.run for the build: pip installs a small tree, compileall writes a .pyc, the check passes."""

    def __init__(self, fail: str = "") -> None:
        self.runs: list[list[str]] = []
        self.fail = fail  # "pip", "strip", "compileall" or "check"

    def step(self, argv: list[str]) -> str:
        if "pip" in argv:
            return "pip"
        if "--strip-unneeded" in argv:
            return "strip"
        return "compileall" if "compileall" in argv else "check"

    def steps(self) -> list[str]:
        return [self.step(argv) for argv in self.runs]

    def __call__(self, argv: list[str], check: bool, **kwargs: Any) -> Any:
        self.runs.append(argv)
        step = self.step(argv)
        if self.fail == step:
            raise subprocess.CalledProcessError(1, argv)
        if step == "pip":
            target = Path(argv[argv.index("--target") + 1])
            (target / "pydantic_core").mkdir(parents=True)
            (target / "pydantic_core" / "_pydantic_core.cpython-312-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
            (target / "pydantic_core" / "__init__.py").write_text("")
            (target / "bin").mkdir()
            (target / "__pycache__").mkdir()
            _fake_botocore(target, set(build_layer.BOTOCORE_SERVICES) | {"s3", "sagemaker"})
        elif step == "compileall":
            site = Path(argv[-1])
            (site / "pydantic_core" / "__pycache__").mkdir()
            (site / "pydantic_core" / "__pycache__" / "__init__.cpython-312.pyc").write_bytes(b"\xcb\r\r\n")
        return subprocess.CompletedProcess(argv, 0)


def test_pip_is_asked_for_the_lambda_runtimes_wheels(tmp_path: Path) -> None:
    argv = build_layer.pip_arguments(REPO / "requirements.txt", tmp_path / "python")
    assert argv[:4] == [sys.executable, "-m", "pip", "install"]
    joined = " ".join(argv)
    for option in (
        "--platform manylinux2014_x86_64",
        "--only-binary=:all:",
        "--python-version 3.12",
        "--implementation cp",
        "--no-compile",
        f"--target {tmp_path / 'python'}",
        f"-r {REPO / 'requirements.txt'}",
    ):
        assert option in joined
    requirements = (REPO / "requirements.txt").read_text()
    assert "boto3==" in requirements
    assert "botocore==" in requirements


def test_built_once_then_stamped_until_requirements_or_bytecode_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic==2.14.3\n")
    layer = tmp_path / "build" / "layer"
    run = FakeRun()
    monkeypatch.setattr(build_layer.subprocess, "run", run)
    monkeypatch.setattr(build_layer, "strip_tool", lambda: STRIP)

    assert build_layer.build(layer, requirements, python=PYTHON312) is True
    assert (layer / "python" / "pydantic_core").is_dir()
    assert not (layer / "python" / "bin").exists()
    assert not (layer / "python" / "__pycache__").exists()  # pip's own bytecode (none with --no-compile) is gone
    assert build_layer.build(layer, requirements, python=PYTHON312) is False  # stamp matches: nothing runs
    assert run.steps() == ["pip", "strip", "compileall", "check"]
    assert run.runs[1][:2] == [STRIP, "--strip-unneeded"]
    assert [Path(p).name for p in run.runs[1][2:]] == ["_pydantic_core.cpython-312-x86_64-linux-gnu.so"]
    # a machine without strip builds another layer (unstripped), so the stamp no longer matches
    monkeypatch.setattr(build_layer, "strip_tool", lambda: None)
    assert build_layer.build(layer, requirements, python=PYTHON312) is True
    assert run.steps()[4:] == ["pip", "compileall", "check"]
    monkeypatch.setattr(build_layer, "strip_tool", lambda: STRIP)

    requirements.write_text("pydantic==2.14.4\n")
    assert build_layer.build(layer, requirements, python=PYTHON312) is True
    assert build_layer.build(layer, requirements, python=PYTHON312, force=True) is True
    assert run.steps().count("pip") == 4
    # the same requirements on a machine without CPython 3.12: a different layer, so the stamp no longer matches
    assert build_layer.build(layer, requirements, python=None, find_python=False) is True
    assert build_layer.build(layer, requirements, python=None, find_python=False) is False
    assert run.steps().count("pip") == 5


def test_bytecode_is_compiled_by_cpython_312_for_the_layers_path_on_lambda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic==2.14.3\n")
    run = FakeRun()
    monkeypatch.setattr(build_layer.subprocess, "run", run)
    monkeypatch.setattr(build_layer, "runtime_python", lambda: PYTHON312)
    monkeypatch.setattr(build_layer, "strip_tool", lambda: STRIP)
    build_layer.build(tmp_path / "layer", requirements)  # finds the interpreter itself

    compileall, check = run.runs[2:]
    assert compileall[:4] == [PYTHON312, "-I", "-m", "compileall"]
    joined = " ".join(compileall)
    assert "--invalidation-mode unchecked-hash" in joined  # read-only /opt: a timestamp .pyc would be recompiled
    assert "-p /opt/python" in joined
    site = tmp_path / "layer.tmp" / "python"  # built there, then moved into place
    assert compileall[compileall.index("-x") + 1] == build_layer.no_bytecode_pattern(site)
    assert check[0] == PYTHON312  # the layer is checked by the runtime's version, with its bytecode
    assert (tmp_path / "layer" / "python" / "pydantic_core" / "__pycache__" / "__init__.cpython-312.pyc").is_file()


def test_without_cpython_312_the_layer_is_built_without_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = FakeRun()
    monkeypatch.setattr(build_layer.subprocess, "run", run)
    monkeypatch.setattr(build_layer, "runtime_python", lambda: None)
    monkeypatch.setattr(build_layer, "strip_tool", lambda: STRIP)

    assert build_layer.main(["--out", str(tmp_path / "layer")]) == 0
    assert run.steps() == ["pip", "strip", "check"]  # no compileall; the check runs with this interpreter
    assert run.runs[2][0] == sys.executable
    assert not list((tmp_path / "layer").rglob("*.pyc"))
    notice, status = capsys.readouterr().out.strip().splitlines()
    assert notice.startswith("layer: no CPython 3.12 here")
    assert "without bytecode" in notice
    assert "no bytecode" in status


def test_botocore_keeps_only_the_services_called_at_the_version_it_loads(tmp_path: Path) -> None:
    site = tmp_path / "python"
    _fake_botocore(site, {"ec2", "dynamodb", "s3", "sagemaker"})
    build_layer.trim_botocore_data(site, {"ec2", "dynamodb"})

    data = site / "botocore" / "data"
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_dir()) == [
        "dynamodb",
        "dynamodb/2016-11-15",
        "ec2",
        "ec2/2016-11-15",
    ]
    assert (data / "ec2" / "2016-11-15" / "paginators-1.json").is_file()
    assert {p.name for p in data.iterdir() if p.is_file()} == {
        "endpoints.json",
        "partitions.json",
        "sdk-default-configuration.json",
        "_retry.json",
    }
    assert (site / "boto3" / "data" / "dynamodb" / "2012-08-10" / "resources-1.json").is_file()
    with pytest.raises(ValueError, match="no data for lambda"):  # a name botocore does not know: a typo
        build_layer.trim_botocore_data(site, {"ec2", "lambda"})


def test_what_nothing_imports_at_run_time_is_removed(tmp_path: Path) -> None:
    site = tmp_path / "python"
    files = {
        "invoke/__init__.py": "",
        "invoke-3.0.3.dist-info/METADATA": "",
        "cffi/__init__.py": "",
        "cffi/_cffi_include.h": "",
        "cffi-2.1.1.dist-info/METADATA": "",
        "pycparser/__init__.py": "",
        "_cffi_backend.cpython-312-x86_64-linux-gnu.so": "",  # the extension PyNaCl loads: kept
        "paramiko/__init__.py": "",
        "paramiko-5.1.0.dist-info/METADATA": "",
        "paramiko-5.1.0.dist-info/RECORD": "",
        "paramiko-5.1.0.dist-info/entry_points.txt": "",
        "pydantic_core/_pydantic_core/__init__.pyi": "",
        "pydantic_core/__init__.py": "",
        "wrapt/_wrappers.c": "",
        "wrapt/__init__.py": "",
        "wrapt-stubs/__init__.pyi": "",
        "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui-bundle.min.js": "",
        "aws_lambda_powertools/event_handler/openapi/swagger_ui/swagger-ui.min.css": "",
        "aws_lambda_powertools/event_handler/openapi/swagger_ui/html.py": "",
    }
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)

    build_layer.remove_unused(site)

    left = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert left == [
        "_cffi_backend.cpython-312-x86_64-linux-gnu.so",
        "aws_lambda_powertools/event_handler/openapi/swagger_ui/html.py",
        "paramiko-5.1.0.dist-info/METADATA",
        "paramiko-5.1.0.dist-info/entry_points.txt",
        "paramiko/__init__.py",
        "pydantic_core/__init__.py",
        "wrapt/__init__.py",
    ]
    assert not (site / "pydantic_core" / "_pydantic_core").exists()  # emptied: gone, not a namespace package


def test_endpoints_keep_only_the_services_called_in_every_partition(tmp_path: Path) -> None:
    path = tmp_path / "python" / "botocore" / "data" / "endpoints.json"
    path.parent.mkdir(parents=True)
    partition = {"defaults": {"hostname": "{service}.{region}.{dnsSuffix}"}, "regions": {"r1": {}}}
    services = {"ec2": {"endpoints": {}}, "states": {"endpoints": {}}, "sagemaker": {"endpoints": {}}}
    endpoints = {"partitions": [partition | {"partition": "aws", "services": services}], "version": 3}
    path.write_text(json.dumps(endpoints))

    build_layer.trim_endpoints(tmp_path / "python", {"ec2", "stepfunctions"})  # Step Functions' prefix: states

    trimmed = json.loads(path.read_text())
    assert trimmed["version"] == 3
    (only,) = trimmed["partitions"]
    assert sorted(only["services"]) == ["ec2", "states"]
    assert only["regions"] == {"r1": {}}
    assert only["defaults"] == partition["defaults"]


def test_no_bytecode_pattern_matches_only_the_listed_subpackages(tmp_path: Path) -> None:
    site = tmp_path / "python"
    pattern = re.compile(build_layer.no_bytecode_pattern(site))
    for skipped in ("pydantic/v1/main.py", "pydantic/mypy.py", "aws_lambda_powertools/utilities/parser/models.py"):
        assert pattern.search(f"{site}/{skipped}"), skipped
    for compiled in (
        "pydantic/main.py",
        "pydantic/mypy_extra.py",
        "aws_lambda_powertools/utilities/data_classes/common.py",
        "other/pydantic/v1/x.py",
    ):
        assert not pattern.search(f"{site}/{compiled}"), compiled


@pytest.mark.parametrize("fail", ["pip", "strip", "compileall", "check"])
def test_a_failed_build_keeps_the_previous_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic==2.14.3\n")
    layer = tmp_path / "layer"
    monkeypatch.setattr(build_layer, "strip_tool", lambda: STRIP)
    monkeypatch.setattr(build_layer.subprocess, "run", FakeRun())
    build_layer.build(layer, requirements, python=PYTHON312)
    stamp = (layer / ".stamp").read_text()

    requirements.write_text("pydantic==2.14.4\n")
    monkeypatch.setattr(build_layer.subprocess, "run", FakeRun(fail=fail))
    with pytest.raises(subprocess.CalledProcessError):
        build_layer.build(layer, requirements, python=PYTHON312)
    assert (layer / ".stamp").read_text() == stamp  # still the old, complete layer
    assert (layer / "python" / "pydantic_core").is_dir()
    assert not build_layer.is_current(layer, requirements, PYTHON312)  # and the next run retries


def test_only_a_runnable_final_cpython_312_is_used(tmp_path: Path) -> None:
    def fake(name: str, body: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        return str(path)

    shim = fake("shim", "echo 'pyenv: python3.12: command not found' >&2; exit 127")  # on PATH, does not run
    older = fake("python3.11", "echo cpython 3 11 final")
    beta = fake("beta", "echo cpython 3 12 beta")  # a pre-release's bytecode differs from the runtime's
    good = fake("python3.12", "echo cpython 3 12 final")
    missing = str(tmp_path / "absent")
    assert build_layer.runtime_python([missing, shim, older, beta, good]) == good
    assert build_layer.runtime_python([missing, shim, older, beta]) is None


# --- the service list against the code ------------------------------------------------------------------------------

_CLIENT_CALLS = {"client", "resource", "clients", "provider_client", "create_client"}


def _parameters(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> set[str]:
    """The parameters of the function the node is in (the innermost one)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
    return set()


def _service_arguments() -> tuple[set[str], list[str]]:
    """Services passed as literals to client()/resource()/clients()/provider_client()/create_client() anywhere in
    lambdas/, and the calls whose service can't be read (anything but a literal or a parameter passed through)."""
    literals: set[str] = set()
    unreadable: list[str] = []
    for path in sorted((REPO / "lambdas").rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            name = getattr(getattr(node, "func", None), "attr", getattr(getattr(node, "func", None), "id", None))
            if not isinstance(node, ast.Call) or name not in _CLIENT_CALLS:
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            argument = node.args[0] if node.args else keywords.get("service_name")
            where = f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}"
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                literals.add(argument.value)
            elif not (isinstance(argument, ast.Name) and argument.id in _parameters(node, parents)):
                unreadable.append(where)
            if "api_version" in keywords:
                unreadable.append(f"{where}: names an api_version (the layer keeps only the newest)")
    return literals, unreadable


def test_the_layer_keeps_botocore_data_for_exactly_the_services_the_code_calls() -> None:
    called, unreadable = _service_arguments()
    assert not unreadable, f"pass services to these as literals so the layer's list can be checked: {unreadable}"
    assert called, "no client calls found in lambdas/: has the code moved?"
    missing = called - build_layer.BOTOCORE_SERVICES
    assert not missing, f"lambdas/ calls {sorted(missing)}: add them to BOTOCORE_SERVICES in scripts/build_layer.py"
    unused = build_layer.BOTOCORE_SERVICES - called
    assert not unused, f"BOTOCORE_SERVICES lists {sorted(unused)}, which lambdas/ no longer calls: remove them"


# --- the real layer ---------------------------------------------------------------------------------------------------


def test_the_built_layer_makes_a_client_for_every_service() -> None:
    """The layer make layer built (skipped when it was not built, or is stale): only the listed services' data, a
    boto3 client for each from the layer alone, and CPython 3.12 bytecode when this machine has a 3.12."""
    python = build_layer.runtime_python()
    if not build_layer.is_current(build_layer.LAYER_DIR, build_layer.REQUIREMENTS, python):
        pytest.skip("build/layer is missing or stale: make layer")
    site = build_layer.LAYER_DIR / "python"
    data = site / "botocore" / "data"
    assert {p.name for p in data.iterdir() if p.is_dir()} == build_layer.BOTOCORE_SERVICES
    assert (data / "endpoints.json").is_file()
    assert (data / "partitions.json").is_file()
    result = subprocess.run(
        build_layer.verify_arguments(python or sys.executable, site),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    if python:
        assert (site / "botocore" / "__pycache__" / "client.cpython-312.pyc").is_file()
        assert (site / "pydantic" / "__pycache__" / "main.cpython-312.pyc").is_file()
        assert not list((site / "pydantic" / "v1").rglob("*.pyc"))  # NO_BYTECODE
        assert (site / "pydantic" / "v1" / "main.py").is_file()  # its source stays


def test_the_built_layer_ships_nothing_that_is_not_used() -> None:
    """The real layer: no unused packages, stubs or RECORD files; endpoints of the listed services only; its shared
    libraries stripped when this machine has strip."""
    python = build_layer.runtime_python()
    if not build_layer.is_current(build_layer.LAYER_DIR, build_layer.REQUIREMENTS, python):
        pytest.skip("build/layer is missing or stale: make layer")
    site = build_layer.LAYER_DIR / "python"
    for name in build_layer.UNUSED_PACKAGES:
        assert not (site / name).exists()
        assert not list(site.glob(f"{name}-*.dist-info"))
    assert not [p for p in site.rglob("*") if p.suffix in build_layer.UNUSED_SUFFIXES or p.name == "RECORD"]
    assert (site / "_cffi_backend.cpython-312-x86_64-linux-gnu.so").is_file()
    endpoints = json.loads((site / "botocore" / "data" / "endpoints.json").read_text())
    prefixes = {build_layer.ENDPOINT_PREFIXES.get(s, s) for s in build_layer.BOTOCORE_SERVICES}
    assert {name for p in endpoints["partitions"] for name in p["services"]} == prefixes
    strip = build_layer.strip_tool()
    if strip:  # stripping a stripped library again changes nothing
        library = site / "nacl" / "_sodium.abi3.so"
        again = Path(os.environ.get("TMPDIR", "/tmp")) / f"ec2jobs-layer-check-{os.getpid()}.so"
        try:
            subprocess.run([strip, "--strip-unneeded", "-o", str(again), str(library)], check=True, timeout=60)
            assert again.stat().st_size == library.stat().st_size
        finally:
            again.unlink(missing_ok=True)


_IMPORTS_EVERYTHING = """
import io, json, sys
from controlplane.handlers import api, authorizer, container, events, openapi_doc, reconcile, workflow
container.get(); container.pipeline(); container.instance_events(); container.reconciler(); container.cancel()
container.uploads(); container.outputs()
openapi_doc.document(api.app)
import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
key = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
)
paramiko.Ed25519Key.from_private_key(io.StringIO(key.decode()))
print(json.dumps(sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})))
"""


def test_the_control_plane_imports_nothing_left_without_bytecode(tmp_path: Path) -> None:
    """NO_BYTECODE is safe to ship as source only: every handler imported, every service wired (S3 and the
    instance grants too), the OpenAPI document built and an SSH key loaded, in this venv (the same pins)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO / "lambdas"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "STATE_TABLE": "state",
        "JOBS_TABLE": "jobs",
        "LOGS_TABLE": "logs",
        "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:jobs",
        "EVENT_BUS_NAME": "bus",
        "ARTIFACT_BUCKET": "ec2jobs-artifacts",
        "INSTANCE_TRANSFER_ROLE_ARN": "arn:aws:iam::123456789012:role/transfer",
    }
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_EVERYTHING], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout.splitlines()[-1])
    assert any("/pydantic/" in f for f in files), "the check did not run the control plane"
    imported = [
        f
        for f in files
        for entry in build_layer.NO_BYTECODE
        if f"/site-packages/{entry}" in f and (entry.endswith("/") or f.endswith(f"/site-packages/{entry}"))
    ]
    assert not imported, f"NO_BYTECODE (scripts/build_layer.py) lists modules the control plane imports: {imported}"
