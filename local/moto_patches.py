"""Every change ec2jobs makes to moto's behaviour, in one place (tests/unit/test_moto_contract.py fails loudly
when a moto upgrade moves what these patch). Applied inside the emulator process only.

- IAM authorisation resource: moto authorises IAM actions against the *existing* role's ARN, or `*` when the role
  does not exist yet, and ignores instance profiles entirely. Real IAM authorises CreateRole/GetRole/... against
  `arn:aws:iam::<account>:role/<name>` and the instance-profile actions against
  `arn:aws:iam::<account>:instance-profile/<name>`, which is what the seed policy's resource patterns name.
"""

from __future__ import annotations

from typing import Any

_APPLIED: set[str] = set()


def iam_request_resource(account_id: str, data: dict[str, Any], existing_role_arn: str | None) -> str:
    """The ARN real IAM authorises this request against (pure, unit-tested)."""

    def first(name: str) -> str | None:
        value = data.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        return str(value) if value else None

    profile = first("InstanceProfileName")
    if profile:
        return f"arn:aws:iam::{account_id}:instance-profile/{profile}"
    role = first("RoleName")
    if role:
        return existing_role_arn or f"arn:aws:iam::{account_id}:role/{role}"
    return "*"


def _patch_iam_resource() -> None:
    from moto.iam.responses import IamResponse

    original = IamResponse._determine_resource

    def determine_resource(self: Any) -> str:
        existing: str | None = None
        if "RoleName" in self.data and "InstanceProfileName" not in self.data:
            resolved = original(self)
            existing = resolved if resolved != "*" else None
        return iam_request_resource(self.current_account, self.data, existing)

    IamResponse._determine_resource = determine_resource  # type: ignore[method-assign]


def apply() -> None:
    """Apply every patch once (idempotent)."""
    if "iam_resource" not in _APPLIED:
        _patch_iam_resource()
        _APPLIED.add("iam_resource")
