"""The functions' code asset: lambdas/ with its CPython 3.12 bytecode, built at synth without Docker (CDK local
bundling), so that a cold start reads the control plane's modules compiled instead of compiling them (/var/task is
read-only: nothing compiled there is ever kept). The layer ships its own bytecode the same way
(scripts/build_layer.py).

`build_code_asset` is the one build: CDK's local bundler (`CompiledCode`) runs it into the asset's output directory,
and bench/coldstart.py runs it into the directory it measures, so the benchmark times what ships.

- The source is lambdas/ without the build machine's own bytecode (`source_excluded`: __pycache__, *.pyc, which
  belong to this venv's interpreter, and *.egg-info).
- When this machine has a CPython 3.12 (scripts/build_layer.py's `runtime_python`: the runtime's exact version, a
  final release), it compiles every module into __pycache__/*.cpython-312.pyc, except NO_BYTECODE. Without one the
  asset ships as source, as before: the synth says so on stderr and goes on.
- Invalidation mode unchecked-hash: the runtime uses the .pyc as it is, without looking at its source. A timestamp
  .pyc would be checked against its source's mtime, which the asset's zip does not keep (CDK zips every file with
  one fixed date): it would never match, so every cold start would compile again and could not write the result.
  checked-hash would also work, at the price of reading and hashing each module's source on every import; the asset
  is immutable once deployed (a new deployment replaces the whole zip, bytecode and source together), so there is
  nothing for that check to catch. Patching a file in place (Lambda's console editor) would not take effect: change
  the code and deploy it.
- The same source compiles to the same bytes wherever it is built: the bytecode records its files as on Lambda
  (/var/task/…), not by the build directory (CDK's differs from one output directory to the next; at import the
  runtime records the real path anyway), and CPython 3.11 and later marshal even sets of constants in a fixed
  order. So the asset, hashed by its output, keeps its hash from one synth to the next and redeploys nothing that
  did not change.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

from stacks.settings import LAMBDAS_DIR, REPO

LAMBDA_TASK_ROOT = "/var/task"  # where Lambda unpacks the code asset: the path compiled into the bytecode
# Files in lambdas/ that no function imports: they ship as source only.
NO_BYTECODE = ("controlplane/core/data/",)  # ec2jobs_transfer.py: handed to instances as a file, run there
_SOURCE_EXCLUDED_DIRS = ("__pycache__",)
_SOURCE_EXCLUDED_SUFFIXES = (".pyc", ".egg-info")


def source_excluded(relative: Path) -> bool:
    """Whether a path of lambdas/ (relative to it) stays out of the asset: the build machine's __pycache__ and
    *.pyc (its interpreter's, of no use to the runtime), *.egg-info."""
    return any(part in _SOURCE_EXCLUDED_DIRS or part.endswith(_SOURCE_EXCLUDED_SUFFIXES) for part in relative.parts)


@cache
def build_layer_module() -> Any:
    """scripts/build_layer.py, loaded once (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("build_layer", REPO / "scripts" / "build_layer.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError("scripts/build_layer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runtime_python() -> str | None:
    """The CPython 3.12 that compiles the asset (the one the layer's build uses), or None when there is none."""
    python: str | None = build_layer_module().runtime_python()
    return python


def no_bytecode_pattern(root: Path) -> str:
    """compileall's -x: NO_BYTECODE, anchored at the asset's root."""
    return f"^{re.escape(str(root))}/({'|'.join(re.escape(path) for path in NO_BYTECODE)})"


def compile_arguments(python: str, root: Path) -> list[str]:
    """compileall with the runtime's interpreter (module doc), isolated (-I: nothing of this shell's PYTHON* nor
    site-packages): unchecked-hash, paths as on Lambda (-s/-p), all but NO_BYTECODE (-x)."""
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
        str(root),
        "-p",
        LAMBDA_TASK_ROOT,
        "-x",
        no_bytecode_pattern(root),
        str(root),
    ]


def build_code_asset(output: Path, python: str | None, source: Path = LAMBDAS_DIR) -> bool:
    """Copy `source` (less `source_excluded`) into `output` (made if missing; it should be empty), then compile it
    with `python`, a CPython 3.12, when given. Returns whether it was compiled. CalledProcessError when compileall
    fails (a syntax error in lambdas/: the deployed function could not import it either)."""

    def ignored(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(source)
        return {name for name in names if source_excluded(base / name)}

    shutil.copytree(source, output, ignore=ignored, dirs_exist_ok=True)
    if python is None:
        return False
    subprocess.run(  # noqa: S603 - the runtime interpreter runtime_python() found, fixed arguments
        compile_arguments(python, output), check=True, capture_output=True, text=True
    )
    return True


FALLBACK_NOTICE = (
    "code asset: no CPython 3.12 here (python3.12 on PATH, /usr/bin, /usr/local/bin, ~/.pyenv): lambdas/ ships as "
    "source, so each cold start compiles the control plane's modules (about 55 ms of the relay's first call); "
    "install python3.12 and synth again to ship its bytecode"
)


@jsii.implements(ILocalBundling)
class CompiledCode:
    """CDK's local bundler for the code asset: `build_code_asset` into CDK's output directory. It always bundles
    (never Docker): with the runtime's bytecode when `python` is a CPython 3.12, else as source, with a notice."""

    def __init__(self, python: str | None, source: Path = LAMBDAS_DIR) -> None:
        self.python = python
        self.source = source

    # jsii passes BundlingOptions as keywords to the keyword-only parameters named here; the rest are not needed.
    def try_bundle(self, output_dir: str, *, image: DockerImage, **options: Any) -> bool:
        try:
            compiled = build_code_asset(Path(output_dir), self.python, self.source)
        except subprocess.CalledProcessError as error:
            detail = " ".join(part.strip() for part in (error.stdout, error.stderr) if part)
            raise RuntimeError(f"code asset: compiling lambdas/ failed (exit {error.returncode}): {detail}") from error
        if not compiled:
            print(FALLBACK_NOTICE, file=sys.stderr)  # part of the synth's output, which goes on
        return True


def code_asset(runtime: lambda_.Runtime) -> lambda_.Code:
    """The code asset of every function: lambdas/ built by `CompiledCode`, with bytecode when this machine has a
    CPython 3.12. Hashed by its output: a build with bytecode and one without are different assets, and the same
    source always builds the same bytes. `runtime`'s image is named only because CDK requires one: local bundling
    always succeeds, so Docker is never used."""
    return lambda_.Code.from_asset(
        str(LAMBDAS_DIR),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(image=runtime.bundling_image, local=CompiledCode(runtime_python())),
    )
