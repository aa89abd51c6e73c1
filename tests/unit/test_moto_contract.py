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


def test_full_object_checksum_is_moto_s_value_without_the_copies() -> None:
    """moto_patches computes a multipart upload's default full-object checksum part by part: the value must be the
    one moto's own code stores (compute_checksum of the whole object), for each type the patch takes over."""
    import os

    from moto.s3 import models
    from moto.s3.utils import compute_checksum

    assert "MultipartChecksumBuilder(" in inspect.getsource(models.FakeMultipart.complete)
    assert "bytes(self.complete_object)" in inspect.getsource(models.MultipartChecksumBuilder)  # the file, unpatched
    moto_patches.apply()
    assert models.MultipartChecksumBuilder.addPart.__module__ == "local.moto_patches"
    parts = [os.urandom(size) for size in (5 * 1024 * 1024, 1, 70_001)]
    for algorithm, kind in ((None, None), ("CRC64NVME", "FULL_OBJECT"), ("CRC32", "FULL_OBJECT"), ("CRC32", None)):
        builder = models.MultipartChecksumBuilder(algorithm, kind)
        for part in parts:
            builder.addPart(part)
        built = builder.build()
        assert built is not None
        if builder.checksum_type == "FULL_OBJECT":
            assert built == ("FULL_OBJECT", compute_checksum(b"".join(parts), builder.checksum_algorithm).decode(), 1)
        else:  # composite: moto's own code
            composite = b"".join(compute_checksum(p, "CRC32", encode_base64=False) for p in parts)
            assert built == ("COMPOSITE", compute_checksum(composite, "CRC32").decode(), 3)


def test_a_task_callback_sent_before_its_heartbeat_wait_is_armed_completes_the_task() -> None:
    """moto reads a waitForTaskToken task's callback only when its heartbeat wait wakes, and arms that wait after the
    task's Lambda returned; the patch wakes it at once when the callback came first (as AWS completes the task)."""
    import time

    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint

    assert "heartbeat_seconds" in inspect.signature(CallbackEndpoint.setup_heartbeat_endpoint).parameters
    assert callable(CallbackEndpoint.get_outcome)
    moto_patches.apply()
    endpoint = CallbackEndpoint("token-1")
    endpoint.notify(object())  # SendTaskSuccess, while the task's Lambda is still returning
    heartbeat = endpoint.setup_heartbeat_endpoint(heartbeat_seconds=5)
    started = time.monotonic()
    assert heartbeat.clear_and_wait()  # unpatched: waits the 5 s, then times the task out
    assert time.monotonic() - started < 1
    assert endpoint.get_outcome() is not None
