"""RunInstances errors → what to do next and a sentence a person can act on (pure).

AWS's error codes are the contract: capacity errors name the Availability Zones that have capacity, quota errors
are VcpuLimitExceeded / MaxSpotInstanceCountExceeded, and an instance profile that IAM has not propagated yet shows
up as InvalidParameterValue about `iamInstanceProfile`. For a spot request, a spot quota error and the missing spot
service-linked role (AuthFailure.ServiceLinkedRoleCreationNotPermitted) are spot-only failures: `use_spot: auto`
then tries on-demand (`Classified.spot_unavailable`); spot capacity errors walk the zones first.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from controlplane.core.lifecycle import FailureReason


class Action(StrEnum):
    WAIT_FOR_PROFILE = "wait_for_profile"  # retry the same request after a short backoff
    TRY_OTHER_ZONE = "try_other_zone"  # capacity: retry in the zones AWS names (or other zones)
    SKIP_ZONE = "skip_zone"  # a zone we guessed does not exist / does not offer the type: move on
    ALREADY_LAUNCHED = "already_launched"  # ClientToken reuse: an earlier attempt launched it
    TRANSIENT = "transient"  # throttling / AWS internal error: let the workflow retry the step
    FAIL = "fail"


@dataclass(frozen=True)
class Classified:
    action: Action
    reason: FailureReason | None = None
    message: str = ""
    zones: tuple[str, ...] = ()
    spot_unavailable: str = ""  # set when only the spot market failed: why (an on-demand request may still work)


# Service Quotas for EC2 vCPU limits, by instance family letter (public quota names and codes).
_ON_DEMAND_QUOTAS = {
    "p": ("Running On-Demand P instances", "L-417A185B"),
    "g": ("Running On-Demand G and VT instances", "L-DB2E81BA"),
    "standard": ("Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", "L-1216C47A"),
}
_SPOT_QUOTAS = {
    "p": ("All P Spot Instance Requests", "L-7212CCBC"),
    "g": ("All G and VT Spot Instance Requests", "L-3819A6DF"),
    "standard": ("All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", "L-34B43A08"),
}
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
        "Blocked",
        "ExpiredToken",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
    }
)
_CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",  # also spot's "There is no Spot capacity available that matches your request."
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "UnfulfillableCapacity",  # spot: not enough spare capacity for the request
        "SpotMaxPriceTooLow",  # spot: the spot price is above the maximum (by default the on-demand price)
    }
)
SPOT_ROLE_CODE = "AuthFailure.ServiceLinkedRoleCreationNotPermitted"  # AWSServiceRoleForEC2Spot missing, not creatable
_QUOTA_CODES = frozenset({"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"})
_ZONE = re.compile(r"\b([a-z]{2}(?:-gov)?-[a-z]+-\d+[a-z])\b")
_ENCODED = re.compile(r"\s*Encoded authorization failure message:.*", re.DOTALL)


def quota_family(instance_type: str) -> str:
    letter = instance_type[:1].lower()
    return letter if letter in {"p", "g"} else "standard"


def zones_named(message: str) -> tuple[str, ...]:
    """The zones AWS suggests ("... choosing us-east-1b, us-east-1c."), else every zone the message names."""
    _, found, suggestion = message.partition("choosing")
    names = _ZONE.findall(suggestion if found else message)
    return tuple(dict.fromkeys(names))


def requested_zones(message: str) -> tuple[str, ...]:
    """The zone a capacity/unsupported error says was requested ("...the Availability Zone you requested
    (us-east-1a)"), so it is not tried again."""
    before, found, _ = message.partition("choosing")
    head = before if found else message
    return tuple(dict.fromkeys(re.findall(r"requested \(([a-z]{2}(?:-gov)?-[a-z]+-\d+[a-z])\)", head)))


def is_profile_propagation(code: str, message: str) -> bool:
    lowered = message.lower()
    return code == "InvalidParameterValue" and ("iaminstanceprofile" in lowered or "instance profile" in lowered)


def _clean(message: str) -> str:
    return _ENCODED.sub("", message).strip()


def classify(
    code: str, message: str, *, instance_type: str, vcpus: int, region: str, spot: bool, zone: str | None = None
) -> Classified:
    """Decide what a RunInstances error means. `zone` is the zone the failed request pinned (None = AWS's choice)."""
    text = _clean(message)
    said = f" AWS said: {code}: {text}" if text else f" AWS said: {code}"
    if is_profile_propagation(code, message):
        return Classified(Action.WAIT_FOR_PROFILE, message=text)
    if code == "IdempotentParameterMismatch":
        return Classified(Action.ALREADY_LAUNCHED, message=text)
    if code in TRANSIENT_CODES:
        return Classified(Action.TRANSIENT, message=f"EC2 is throttling or briefly unavailable.{said}")
    if code in _CAPACITY_CODES or (code == "Unsupported" and (zone is not None or zones_named(message))):
        return Classified(Action.TRY_OTHER_ZONE, FailureReason.CAPACITY, text, zones_named(message))
    if zone is not None and (
        code in {"InvalidAvailabilityZone", "InvalidParameterValue", "InvalidInput"} and "zone" in text.lower()
    ):
        return Classified(Action.SKIP_ZONE, message=text)
    if code in _QUOTA_CODES:
        quotas = _SPOT_QUOTAS if spot or code == "MaxSpotInstanceCountExceeded" else _ON_DEMAND_QUOTAS
        name, quota_code = quotas[quota_family(instance_type)]
        return Classified(
            Action.FAIL,
            FailureReason.QUOTA,
            f"Your account's EC2 quota is too low to start {instance_type} ({vcpus} vCPUs) in {region}: raise "
            f"'{name}' ({quota_code}) to at least {vcpus} plus what your other instances use, in Service Quotas → "
            f"Amazon Elastic Compute Cloud (Amazon EC2) → {region}, then resubmit.{said}",
            spot_unavailable=(
                f"the spot quota is too low to start {instance_type} ({vcpus} vCPUs) in {region} (raise '{name}' "
                f"({quota_code}) to use spot).{said}"
                if spot
                else ""
            ),
        )
    if spot and code == SPOT_ROLE_CODE:
        return Classified(
            Action.FAIL,
            FailureReason.CREDENTIALS,
            "EC2 needs the service-linked role AWSServiceRoleForEC2Spot to launch spot instances, and the provider's "
            "key may not create it (TransformerLabComputePolicy has no iam:CreateServiceLinkedRole). Create it once "
            "in the provider's account: aws iam create-service-linked-role --aws-service-name spot.amazonaws.com, "
            f"or use use_spot: auto or false.{said}",
            spot_unavailable=f"the account has no spot service-linked role (AWSServiceRoleForEC2Spot).{said}",
        )
    if code in AUTH_CODES:
        return Classified(
            Action.FAIL,
            FailureReason.CREDENTIALS,
            "The provider's AWS credentials were rejected or lack a permission from TransformerLabComputePolicy "
            f"(check the key is active and the policy attached, README 'IAM policy for a provider').{said}",
        )
    return Classified(Action.FAIL, FailureReason.LAUNCH_ERROR, f"EC2 refused to launch {instance_type}.{said}")


def capacity_exhausted(instance_type: str, region: str, tried: list[str], spot: bool, last: str) -> str:
    where = ", ".join(tried) if tried else "AWS's choice of zone"
    hint = (
        "Spot capacity comes and goes: resubmit later, or use use_spot: auto (falls back to on-demand) or false."
        if spot
        else "Resubmit later, choose another region that offers it (GET /catalog), or another instance type."
    )
    market = "spot" if spot else "on-demand"
    if last.startswith("Unsupported"):
        return (
            f"AWS does not offer {instance_type} in the {region} zones tried ({where}). Choose another region that "
            f"offers it (GET /catalog) or another instance type. AWS said: {last}"
        )
    return f"AWS has no {market} capacity for {instance_type} in {region} right now (tried: {where}). {hint} " + (
        f"AWS said: {last}" if last else ""
    )


def no_spot_capacity(instance_type: str, region: str, tried: list[str], last: str) -> str:
    """Why `use_spot: auto` left spot after walking the zones: the zones tried and AWS's last word."""
    where = ", ".join(tried) if tried else "AWS's choice of zone"
    return f"no spot capacity for {instance_type} in {region} (tried: {where})." + (
        f" AWS said: {last}" if last else ""
    )


def spot_fallback_note(why: str) -> str:
    """The note a job gets when `use_spot: auto` moves on to on-demand."""
    return f"use_spot: auto fell back to on-demand: {why}"


def after_spot(message: str, spot_why: str | None) -> str:
    """A failure of the on-demand attempt of `use_spot: auto`, saying that spot was tried first and why it failed."""
    if spot_why:
        return f"{message} (use_spot: auto tried spot first: {spot_why})"
    return f"{message} (use_spot: auto tried spot first; see the job's notes)"


def _listed(items: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def next_region_note(instance_type: str, region: str, next_region: str) -> str:
    """The note a job gets when no zone of `region` had capacity and the launch moves on to `next_region`."""
    return f"no capacity for {instance_type} in {region}: trying {next_region}"


def zone_letters(region: str, zones: Sequence[str]) -> tuple[str, ...]:
    """The zones tried in `region` by their letters ("us-east-1b" → "b"); AWS's choice of zone has none."""
    return tuple(dict.fromkeys(z[len(region) :] for z in zones if z.startswith(region) and len(z) > len(region)))


def _utc(instant: dt.datetime, seconds: bool, date: bool) -> str:
    shape = ("%Y-%m-%d " if date else "") + ("%H:%M:%S" if seconds else "%H:%M")
    return instant.astimezone(dt.UTC).strftime(shape) + " UTC"


def waiting_for_capacity(
    instance_type: str,
    regions: Sequence[str],
    last_zones: Sequence[str],
    retry_at: dt.datetime,
    until: dt.datetime,
    max_wait_minutes: int,
) -> str:
    """WAITING_CAPACITY's status detail: the regions that had no capacity (the last one with the zones its walk
    tried), when the launch tries again and until when it keeps trying."""
    letters = zone_letters(regions[-1], last_zones) if regions else ()
    where = _listed(list(regions)) + (f" ({', '.join(letters)})" if letters else "")
    other_day = until.astimezone(dt.UTC).date() != retry_at.astimezone(dt.UTC).date()
    return (
        f"no capacity for {instance_type} in {where}; trying again at {_utc(retry_at, True, False)}, until "
        f"{_utc(until, False, other_day)} (max_wait_minutes {max_wait_minutes})"
    )


def regions_exhausted(
    instance_type: str,
    regions: Sequence[str],
    last: str,
    waited_minutes: int | None = None,
    max_wait_minutes: int | None = None,
) -> str:
    """The CAPACITY failure after every region had no capacity (and, with job_recovery, after waiting): the regions
    tried, how long the launch waited, then what the last region's walk found (`last`). One region without waiting:
    `last` alone, as before regions and waiting existed."""
    if len(regions) <= 1 and waited_minutes is None:
        return last
    head = f"AWS had no capacity for {instance_type} in {_listed(list(regions))}"
    if waited_minutes is not None:
        head += f"; waited {waited_minutes} minutes (job_recovery.max_wait_minutes {max_wait_minutes})"
    return f"{head}. {last}"
