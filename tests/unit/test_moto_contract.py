"""What local/ relies on in moto. If a moto upgrade moves any of it, these fail first, naming what changed
(instead of the emulator silently authorising differently)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import moto
from moto import settings
from moto.core import responses
from moto.core.authorization import ActionAuthenticatorMixin
from moto.ec2.models import amis
from moto.iam.responses import IamResponse

from local import moto_patches

REPO = Path(__file__).resolve().parents[2]


def test_moto_is_the_pinned_version() -> None:
    pinned = re.search(r"^moto\[[^\]]*\]==([\w.]+)$", (REPO / "requirements-dev.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    assert moto.__version__ == pinned.group(1), "moto changed: re-check local/moto_patches.py and FACTS"


def test_iam_enforcement_switches_exist() -> None:
    """local.emulator.enable_iam_enforcement() flips these in the emulator process."""
    assert hasattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT")
    assert hasattr(ActionAuthenticatorMixin, "request_count")


def test_authorisation_resource_still_comes_from_determine_resource() -> None:
    """moto_patches replaces IamResponse._determine_resource; moto must still ask it for the resource."""
    assert "_determine_resource" in inspect.getsource(responses.BaseResponse.call_action)
    assert callable(IamResponse._determine_resource)


def test_the_patch_applies_once_and_resolves_profiles() -> None:
    moto_patches.apply()
    patched = IamResponse._determine_resource
    moto_patches.apply()
    assert IamResponse._determine_resource is patched
    assert patched.__module__ == "local.moto_patches"


def test_amis_are_loaded_from_moto_amis_path() -> None:
    """The emulator ships DLAMI + Ubuntu images through MOTO_AMIS_PATH (moto has neither)."""
    assert "MOTO_AMIS_PATH" in inspect.getsource(amis)
