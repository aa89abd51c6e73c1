"""scripts/build_layer.py: the pip command (manylinux x86_64 wheels for CPython 3.12, no Docker), the stamp that skips
an unchanged rebuild, and that a failed build leaves the previous layer alone. pip itself is faked here."""

from __future__ import annotations

import importlib.util
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


class FakePip:
    def __init__(self, fail: bool = False) -> None:
        self.runs: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], check: bool) -> Any:
        self.runs.append(argv)
        if self.fail:
            raise subprocess.CalledProcessError(1, argv)
        target = Path(argv[argv.index("--target") + 1])
        (target / "pydantic_core").mkdir(parents=True)
        (target / "pydantic_core" / "_pydantic_core.cpython-312-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
        (target / "bin").mkdir()
        (target / "__pycache__").mkdir()
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
        f"--target {tmp_path / 'python'}",
        f"-r {REPO / 'requirements.txt'}",
    ):
        assert option in joined
    requirements = (REPO / "requirements.txt").read_text()
    assert "boto3==" in requirements
    assert "botocore==" in requirements


def test_built_once_then_stamped_until_requirements_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic==2.14.3\n")
    layer = tmp_path / "build" / "layer"
    pip = FakePip()
    monkeypatch.setattr(build_layer.subprocess, "run", pip)

    assert build_layer.build(layer, requirements) is True
    assert (layer / "python" / "pydantic_core").is_dir()
    assert not (layer / "python" / "bin").exists()
    assert not (layer / "python" / "__pycache__").exists()
    assert build_layer.build(layer, requirements) is False  # stamp matches: no pip run
    assert len(pip.runs) == 1

    requirements.write_text("pydantic==2.14.4\n")
    assert build_layer.build(layer, requirements) is True
    assert len(pip.runs) == 2
    assert build_layer.build(layer, requirements, force=True) is True
    assert len(pip.runs) == 3


def test_a_failed_build_keeps_the_previous_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydantic==2.14.3\n")
    layer = tmp_path / "layer"
    monkeypatch.setattr(build_layer.subprocess, "run", FakePip())
    build_layer.build(layer, requirements)
    stamp = (layer / ".stamp").read_text()

    requirements.write_text("pydantic==2.14.4\n")
    monkeypatch.setattr(build_layer.subprocess, "run", FakePip(fail=True))
    with pytest.raises(subprocess.CalledProcessError):
        build_layer.build(layer, requirements)
    assert (layer / ".stamp").read_text() == stamp  # still the old, complete layer
    assert (layer / "python" / "pydantic_core").is_dir()
    assert not build_layer.is_current(layer, requirements)  # and the next run retries
