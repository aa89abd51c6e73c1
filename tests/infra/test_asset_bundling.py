"""stacks/asset_bundling.py: the code asset ships the control plane's modules compiled by CPython 3.12 as the
runtime reads them (unchecked-hash, named by their path on Lambda), the same bytes on every build; without a
CPython 3.12 the synth still works, ships lambdas/ as source and says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from stacks import asset_bundling
from stacks.app import build_app
from tests.infra.conftest import Synth

PYTHON312 = asset_bundling.runtime_python()
needs_python312 = pytest.mark.skipif(PYTHON312 is None, reason="no CPython 3.12 here: the asset ships as source")
_LOAD = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
import controlplane.core.ids as ids
print(json.dumps({"edited": hasattr(ids, "EDITED_AFTER_THE_BUILD"), "magic": importlib.util.MAGIC_NUMBER.hex()}))
"""


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _code_asset(synth: Synth) -> Path:
    (function, *_) = (r["Properties"] for r in synth.of_type("AWS::Lambda::Function").values())
    return synth.outdir / f"asset.{function['Code']['S3Key'].removesuffix('.zip')}"


@needs_python312
def test_the_asset_bytecode_is_cpython_312_unchecked_hash_and_the_runtime_reads_it(
    synth: Synth, tmp_path: Path
) -> None:
    staged = _code_asset(synth)
    header = (staged / "controlplane" / "core" / "__pycache__" / "ids.cpython-312.pyc").read_bytes()[:16]
    assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, the source not checked (PEP 552)
    assert not (staged / "controlplane" / "core" / "data" / "__pycache__").exists()  # NO_BYTECODE
    # CPython 3.12 imports the module from its .pyc without looking at the source (-B: writes nothing, as on
    # read-only /var/task): a source edited after the build goes unnoticed.
    task = tmp_path / "task"
    shutil.copytree(staged, task)
    with (task / "controlplane" / "core" / "ids.py").open("a") as source:
        source.write("EDITED_AFTER_THE_BUILD = True\n")
    loaded = subprocess.run(
        [str(PYTHON312), "-I", "-S", "-B", "-c", _LOAD, str(task)], capture_output=True, text=True, check=True
    )
    answer = json.loads(loaded.stdout)
    assert answer["edited"] is False
    assert header[:4].hex() == answer["magic"]  # the runtime's own bytecode version


@needs_python312
def test_two_builds_are_byte_identical_so_the_asset_keeps_its_hash(tmp_path: Path) -> None:
    assert asset_bundling.build_code_asset(tmp_path / "first", PYTHON312)
    assert asset_bundling.build_code_asset(tmp_path / "second", PYTHON312)
    first, second = _files(tmp_path / "first"), _files(tmp_path / "second")
    assert any(name.endswith(".pyc") for name in first)
    assert first == second


def test_the_build_leaves_out_the_build_machines_bytecode(tmp_path: Path) -> None:
    source = tmp_path / "lambdas"
    (source / "pkg" / "__pycache__").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("x = 1\n")
    (source / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"stale")
    (source / "pkg" / "stray.pyc").write_bytes(b"stale")
    (source / "pkg.egg-info").mkdir()
    (source / "pkg.egg-info" / "PKG-INFO").write_text("Name: pkg\n")
    assert not asset_bundling.build_code_asset(tmp_path / "out", None, source)
    assert _files(tmp_path / "out") == {"pkg/mod.py": b"x = 1\n"}


def test_a_failed_compile_fails_the_bundling_with_the_reason(tmp_path: Path) -> None:
    if PYTHON312 is None:
        pytest.skip("no CPython 3.12 here: nothing is compiled")
    source = tmp_path / "lambdas"
    source.mkdir()
    (source / "broken.py").write_text("def f(:\n")
    bundler = asset_bundling.CompiledCode(PYTHON312, source)
    with pytest.raises(RuntimeError, match=r"compiling lambdas/ failed .*broken\.py"):
        bundler.try_bundle(str(tmp_path / "out"), image=None)  # type: ignore[arg-type]


def test_without_a_cpython_312_the_synth_ships_the_source_and_says_so(
    tmp_path: Path, layer_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(asset_bundling, "runtime_python", lambda: None)
    app, stack = build_app(outdir=str(tmp_path / "cdk.out"), layer_dir=layer_dir)
    assembly = app.synth()
    template = json.loads((Path(assembly.directory) / stack.template_file).read_text())
    synth = Synth(app=app, stack=stack, outdir=Path(assembly.directory), template=template)
    source = asset_bundling.LAMBDAS_DIR
    expected = {
        p.relative_to(source).as_posix(): p.read_bytes()
        for p in sorted(source.rglob("*"))
        if p.is_file() and not asset_bundling.source_excluded(p.relative_to(source))
    }
    assert _files(_code_asset(synth)) == expected
    assert asset_bundling.FALLBACK_NOTICE in capsys.readouterr().err
