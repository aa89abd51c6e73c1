"""Uploads over time, on the emulator's state table: an upload left pending lapses after OPEN_DAYS (no longer
counted against the team's 20, no longer completable), and a complete upload past its expiry cannot be named by a
job. Records are written with past times through the store itself."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from controlplane.adapters.uploads import Upload
from controlplane.core import grants
from controlplane.service.uploads import MAX_OPEN_UPLOADS, OPEN_DAYS
from tests.integration.conftest import ControlPlane, Tenant

NOW = dt.datetime.now(dt.UTC)


def _record(
    team_id: str, *, age: dt.timedelta, status: str = "pending", expires_in: dt.timedelta | None = None
) -> Upload:
    upload_id = "up-" + uuid.uuid4().hex[:20]
    created = NOW - age
    return Upload(
        upload_id=upload_id,
        team_id=team_id,
        kind="workdir",
        size=4,
        sha256="0" * 64,
        key=grants.upload_key(team_id, upload_id),
        part_size=8 * 1024 * 1024,
        status=status,  # type: ignore[arg-type]
        created_at=created,
        completed_at=created if status == "complete" else None,
        expires_at=NOW + (expires_in if expires_in is not None else dt.timedelta(days=30)),
    )


@pytest.fixture
def store(control_plane: ControlPlane) -> Any:
    from controlplane.handlers import container

    return container.upload_store()


def test_lapsed_pending_uploads_do_not_count_and_cannot_be_completed(
    control_plane: ControlPlane, tenant: Tenant, store: Any
) -> None:
    old = [_record(tenant.team_id, age=dt.timedelta(days=OPEN_DAYS, minutes=1)) for _ in range(MAX_OPEN_UPLOADS)]
    for upload in old:
        store.create(upload)
    assert store.count_open(tenant.team_id, NOW - dt.timedelta(days=OPEN_DAYS)) == 0
    body = {"kind": "workdir", "size": 4, "sha256": "0" * 64}
    assert control_plane.call("POST", "/uploads", tenant.token, body=body).status == 201  # the 20 lapsed ones: free
    lapsed = control_plane.call("POST", f"/uploads/{old[0].upload_id}/complete", tenant.token, body={"parts": []})
    assert lapsed.status == 409
    assert "never completed, so its parts are gone: start a new upload" in lapsed.json()["message"]
    assert control_plane.call("POST", f"/uploads/{old[0].upload_id}/parts", tenant.token).status == 409
    recent = _record(tenant.team_id, age=dt.timedelta(hours=1))
    store.create(recent)
    assert store.count_open(tenant.team_id, NOW - dt.timedelta(days=OPEN_DAYS)) == 2


def test_an_expired_upload_cannot_be_named_by_a_job(control_plane: ControlPlane, tenant: Tenant, store: Any) -> None:
    expired = _record(tenant.team_id, age=dt.timedelta(days=31), status="complete", expires_in=-dt.timedelta(days=1))
    store.create(expired)
    body = {"provider_id": tenant.provider_id, "run": "echo", "workdir": {"upload": expired.upload_id}}
    refused = control_plane.call("POST", "/jobs", tenant.token, body=body)
    assert refused.status == 400
    assert refused.json()["message"].startswith(f"workdir: upload {expired.upload_id} expired on ")
    gone = control_plane.call("POST", f"/uploads/{expired.upload_id}/complete", tenant.token, body={"parts": []})
    assert gone.status == 404  # past its expiry an upload is gone
