"""IAM where moto is kinder than AWS: a WSGI middleware in front of moto that evaluates, with the strict evaluator of
local/iam_policy.py, the requests whose outcome depends on what moto does not evaluate (Condition blocks, policy
variables, permissions boundaries, iam:PassRole):

- every request signed with a **role session's** credentials, e.g. an instance's (what it gets from IMDS; the
  sandbox's `aws` shim): the role's inline and attached policies, its permissions boundary, and the request context
  EC2 gives instance credentials (`ec2:SourceInstanceARN`, absent for any other session), with resource-level
  keys for ec2:TerminateInstances
  (`ec2:InstanceID`, `ec2:ResourceTag/<key>`, `aws:ResourceTag/<key>`, `ec2:Region`). Always on: that is AWS.
- requests signed with an **IAM user's** keys (a provider's) for the calls whose conditions matter to the provider
  policies: iam:CreateRole / iam:PutRolePolicy (`iam:PermissionsBoundary`, the boundary given / the role's) and the
  iam:PassRole that ec2:RunInstances with an instance profile implies (`iam:PassedToService` = ec2.amazonaws.com),
  which moto does not check at all.

A denial is answered as AWS answers it (EC2: 403 UnauthorizedOperation; IAM: 403 AccessDenied). A role-session
request this module allowed is not checked again by moto (its evaluator would deny any Resource other than `*`, as
it checks EC2 actions against `*`). Installed by `install(server)` in the emulator process (local/emulator.py).
The moto internals used here are pinned by tests/unit/test_iam_conditions.py::test_moto_contract_*.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from local.iam_policy import Decision, Request, UnsupportedPolicy, authorize

logger = logging.getLogger("ec2jobs.iam")
EC2_SERVICE_PRINCIPAL = "ec2.amazonaws.com"
_CREDENTIAL = re.compile(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/")
_authorized: contextvars.ContextVar[bool] = contextvars.ContextVar("ec2jobs_iam_authorized", default=False)


@dataclass(frozen=True)
class Principal:
    """Who signed a request, with the policies AWS would evaluate for it."""

    kind: str  # "role" (a role session, e.g. an instance's credentials) or "user"
    arn: str
    account: str
    policies: list[dict[str, Any]]
    boundary: dict[str, Any] | None = None
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Denial:
    service: str
    action: str
    resource: str
    principal: str
    detail: str = ""


# -- moto's state (same process) ----------------------------------------------------------------------------------


def _document(policy: Any) -> dict[str, Any]:
    """A policy document from what moto stores: a JSON string, {"policy_document": ...} or a managed policy."""
    if hasattr(policy, "versions"):
        policy = next(v.document for v in policy.versions if v.is_default)
    elif isinstance(policy, Mapping):
        policy = policy["policy_document"]
    return dict(json.loads(policy) if isinstance(policy, str) else policy)


def _moto_error() -> tuple[type[Exception], ...]:
    """What moto raises for a missing entity (NoSuchEntity, InvalidInstanceID.NotFound, ...)."""
    from moto.core.exceptions import ServiceException
    from werkzeug.exceptions import HTTPException

    return (ServiceException, HTTPException)


def _iam(account: str) -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[account]["aws"]


def _boundary(account: str, arn: str | None) -> dict[str, Any] | None:
    """The boundary's document; a boundary that names no existing policy allows nothing."""
    if not arn:
        return None
    try:
        return _document(_iam(account).get_policy(arn))
    except _moto_error():  # NoSuchEntity
        return {"Version": "2012-10-17", "Statement": []}


def role_session(access_key_id: str) -> tuple[Any, str | None, str, str] | None:
    """(moto role, instance ARN or None, account, session name) when this key is a role session; the instance ARN
    when it is an instance's role credentials: a session of the role in the instance profile associated with the
    instance whose id is the session name (as EC2 names them)."""
    from moto.ec2.models import ec2_backends
    from moto.sts.models import sts_backends

    for account, partitions in list(sts_backends.items()):
        for backend in list(partitions.values()):
            session = backend.get_assumed_role_from_access_key(access_key_id)
            if session is None:
                continue
            try:
                role = _iam(account).get_role_by_arn(session.role_arn)
            except _moto_error():
                return None  # a role that no longer exists (or in another account): left to moto
            for region, ec2 in list(ec2_backends[account].items()):
                association = ec2.iam_instance_profile_associations.get(session.session_name)
                if association is not None and any(r.arn == role.arn for r in association.iam_instance_profile.roles):
                    instance = f"arn:aws:ec2:{region}:{account}:instance/{session.session_name}"
                    return role, instance, account, session.session_name
            return role, None, account, session.session_name
    return None


def _user(access_key_id: str) -> tuple[Any, str] | None:
    """(moto user, account) owning this long-term access key."""
    from moto.iam.models import iam_backends

    for account, partitions in list(iam_backends.items()):
        backend = partitions.get("aws") if hasattr(partitions, "get") else None
        if backend is None:
            continue
        for user in backend.users.values():
            if any(key.access_key_id == access_key_id for key in user.access_keys):
                return user, account
    return None


def principal_for(access_key_id: str) -> Principal | None:
    """The principal this module evaluates for a key, or None (anything else: left to moto)."""
    found = role_session(access_key_id)
    if found is not None:
        role, instance_arn, account, session_name = found
        policies = [_document(p) for p in role.policies.values()]
        policies += [_document(p) for p in role.managed_policies.values()]
        context = {"aws:PrincipalArn": role.arn}
        if instance_arn is not None:  # present only for an instance's profile credentials (IAM docs)
            context["ec2:SourceInstanceARN"] = instance_arn
        return Principal(
            "role",
            f"arn:aws:sts::{account}:assumed-role/{role.name}/{session_name}",
            account,
            policies,
            _boundary(account, role.permissions_boundary_arn),
            context,
        )
    user_found = _user(access_key_id)
    if user_found is None:
        return None
    user, account = user_found
    from moto.iam.access_control import IAMUserAccessKey

    key = IAMUserAccessKey(account_id=account, partition="aws", access_key_id=access_key_id, headers={})
    return Principal(
        "user",
        user.arn,
        account,
        [_document(p) for p in key.collect_policies()],
        _boundary(account, getattr(user, "permissions_boundary", None) and user.permissions_boundary),
        {"aws:username": user.name, "aws:PrincipalArn": user.arn},
    )


def _instance(account: str, region: str, instance_id: str) -> Any | None:
    from moto.ec2.models import ec2_backends

    try:
        return ec2_backends[account][region].get_instance(instance_id)
    except _moto_error():  # InvalidInstanceID.NotFound: moto answers that itself
        return None


# -- what each request asks -------------------------------------------------------------------------------------


def _form_values(form: Mapping[str, list[str]], prefix: str) -> list[str]:
    """InstanceId.1, InstanceId.2, ... in order."""
    numbered = [(int(k[len(prefix) + 1 :]), v[0]) for k, v in form.items() if re.fullmatch(rf"{prefix}\.\d+", k)]
    return [value for _, value in sorted(numbered)]


def questions(
    principal: Principal, service: str, operation: str, region: str, form: Mapping[str, list[str]]
) -> list[Request]:
    """The authorisation questions AWS asks for this request, as far as this module evaluates them (pure but for
    moto look-ups of the resources named)."""
    base = dict(principal.context)
    account = principal.account
    if principal.kind == "role":
        action = f"{service}:{operation}"
        if action == "ec2:TerminateInstances":
            asked = []
            for instance_id in _form_values(form, "InstanceId"):
                instance = _instance(account, region, instance_id)
                if instance is None:
                    return []  # moto answers InvalidInstanceID.NotFound for the whole request
                context: dict[str, str] = base | {"ec2:InstanceID": instance_id, "ec2:Region": region}
                for tag in instance.get_tags():
                    context[f"ec2:ResourceTag/{tag['key']}"] = tag["value"]
                    context[f"aws:ResourceTag/{tag['key']}"] = tag["value"]
                asked.append(Request(action, f"arn:aws:ec2:{region}:{account}:instance/{instance_id}", context))
            return asked
        return [Request(action, "*", base | ({"ec2:Region": region} if service == "ec2" else {}))]
    iam = _iam(account)

    def first(name: str) -> str:
        return (form.get(name) or [""])[0]

    if service == "iam" and operation == "CreateRole":
        path = first("Path") or "/"
        context = base | (
            {"iam:PermissionsBoundary": first("PermissionsBoundary")} if first("PermissionsBoundary") else {}
        )
        return [Request("iam:CreateRole", f"arn:aws:iam::{account}:role{path}{first('RoleName')}", context)]
    if service == "iam" and operation == "PutRolePolicy":
        try:
            role = iam.get_role(first("RoleName"))
        except _moto_error():
            return []  # NoSuchEntity: moto answers it
        boundary = role.permissions_boundary_arn
        return [
            Request("iam:PutRolePolicy", role.arn, base | ({"iam:PermissionsBoundary": boundary} if boundary else {}))
        ]
    if service == "ec2" and operation == "RunInstances":
        profile = None
        try:
            if first("IamInstanceProfile.Arn"):
                profile = iam.get_instance_profile_by_arn(first("IamInstanceProfile.Arn"))
            elif first("IamInstanceProfile.Name"):
                profile = iam.get_instance_profile(first("IamInstanceProfile.Name"))
        except _moto_error():
            return []  # moto answers the unknown profile
        roles = profile.roles if profile is not None else []
        return [Request("iam:PassRole", r.arn, base | {"iam:PassedToService": EC2_SERVICE_PRINCIPAL}) for r in roles]
    return []


def check(
    access_key_id: str, service: str, operation: str, region: str, form: Mapping[str, list[str]]
) -> tuple[Principal | None, Denial | None]:
    """(principal, denial or None). A policy the evaluator cannot read denies (loudly), never allows."""
    principal = principal_for(access_key_id)
    if principal is None:
        return None, None
    for request in questions(principal, service, operation, region, form):
        try:
            decision = authorize(principal.policies, request, principal.boundary)
        except UnsupportedPolicy as error:
            logger.warning("ec2jobs emulator cannot evaluate %s's policy: %s", principal.arn, error)
            return principal, Denial(service, request.action, request.resource, principal.arn, f" ({error})")
        if decision is not Decision.ALLOW:
            return principal, Denial(service, request.action, request.resource, principal.arn)
    return principal, None


# -- the HTTP side -------------------------------------------------------------------------------------------------


def denial_response(denial: Denial) -> tuple[str, str, bytes]:
    """(status, content type, body) shaped like AWS's answer for the service."""
    message = (
        f"User: {denial.principal} is not authorized to perform: {denial.action} on resource: {denial.resource} "
        f"because no identity-based policy allows the {denial.action} action{denial.detail}"
    )
    if denial.service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code>'
            f"<Message>You are not authorized to perform this operation. {escape(message)}</Message></Error>"
            "</Errors><RequestID>ec2jobs-iam-conditions</RequestID></Response>"
        )
        return "403 Forbidden", "text/xml", body.encode()
    if denial.service in {"iam", "sts"}:
        body = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
            f"<Message>{escape(message)}</Message></Error><RequestId>ec2jobs-iam-conditions</RequestId></ErrorResponse>"
        )
        return "403 Forbidden", "text/xml", body.encode()
    return (
        "400 Bad Request",
        "application/x-amz-json-1.1",
        json.dumps({"__type": "AccessDeniedException", "message": message}).encode(),
    )


class IamConditionsMiddleware:
    """WSGI middleware in front of moto (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        match = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
        if match is None:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        form = {} if target else parse_qs(body.decode(errors="replace"))
        operation = target.rpartition(".")[2] if target else (form.get("Action") or [""])[0]
        key, region, service = match.group(1), match.group(2), match.group(3)
        try:
            principal, denial = check(key, service, operation, region, form)
        except Exception:  # never let the checker's own failure look like an AWS answer
            logger.exception("IAM condition check failed for %s:%s", service, operation)
            raise
        if denial is not None:
            status, content_type, payload = denial_response(denial)
            start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(payload)))])
            return [payload]
        token = _authorized.set(principal is not None and principal.kind == "role")
        try:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        finally:
            _authorized.reset(token)


def _patch_moto_check() -> None:
    """moto checks a role-session request again with its own evaluator (EC2 actions against `*`, conditions
    ignored): skip it for the requests this module already authorised."""
    from moto.iam.access_control import IAMRequestBase

    original = IAMRequestBase.check_action_permitted
    if getattr(original, "_ec2jobs", False):
        return

    def check_action_permitted(self: Any, resource: str) -> None:
        if _authorized.get():
            return
        original(self, resource)

    check_action_permitted._ec2jobs = True  # type: ignore[attr-defined]
    IAMRequestBase.check_action_permitted = check_action_permitted  # type: ignore[method-assign]


def install(server: Any) -> IamConditionsMiddleware:
    """In the emulator process: put the middleware in front of moto (werkzeug serves `server._server.app`)."""
    _patch_moto_check()
    middleware = IamConditionsMiddleware(server._server.app)
    server._server.app = middleware
    return middleware
