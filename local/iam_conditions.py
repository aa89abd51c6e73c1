"""IAM where moto is kinder than AWS: a WSGI middleware in front of moto that evaluates, with the strict evaluator of
local/iam_policy.py, the requests whose outcome depends on what moto does not evaluate (Condition blocks, policy
variables, permissions boundaries, iam:PassRole):

- every request signed with a **role session's** credentials, e.g. an instance's (what it gets from IMDS; the
  sandbox's `aws` shim): the role's inline and attached policies, its permissions boundary, and the request context
  EC2 gives instance credentials (`ec2:SourceInstanceARN`, absent for any other session), with resource-level
  keys for ec2:TerminateInstances
  (`ec2:InstanceID`, `ec2:ResourceTag/<key>`, `aws:ResourceTag/<key>`, `ec2:Region`). Always on: that is AWS.
  A role session given a **session policy** at AssumeRole (the `Policy` parameter, which moto stores on the
  assumed role and never evaluates) gets the intersection: identity policies AND boundary AND session policy,
  explicit Deny anywhere wins (https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session).
- **S3** requests signed with a role session's credentials (SigV4 header or presigned URL; SigV2 too), e.g. a
  job's storage credentials (InstanceTransferRole narrowed by core/grants.py's session policy): the REST request
  is mapped to the IAM action(s) S3 authorises it as (`s3_questions`; object GET/HEAD -> s3:GetObject; PUT,
  UploadPart, Create-/CompleteMultipartUpload -> s3:PutObject, a copy also s3:GetObject on its source; DELETE ->
  s3:DeleteObject; `?uploadId` DELETE / GET -> s3:AbortMultipartUpload / s3:ListMultipartUploadParts; bucket GET
  -> s3:ListBucket with `s3:prefix`, "" when absent; DeleteObjects -> s3:DeleteObject per key; ...) on
  `arn:aws:s3:::<bucket>[/<URL-decoded key>]`, the bucket taken from the path or the Host exactly as moto's server
  does. A request not mapped is asked as `s3:UnmappedRequest` on its bucket or object, which only `s3:*` / `*`
  statements allow. S3 requests signed with any other key (the control plane's, a provider's) are left to moto.
- requests signed with an **IAM user's** keys (a provider's) for the calls whose conditions matter to the provider
  policies: iam:CreateRole / iam:PutRolePolicy (`iam:PermissionsBoundary`, the boundary given / the role's) and the
  iam:PassRole that ec2:RunInstances with an instance profile implies (`iam:PassedToService` = ec2.amazonaws.com),
  which moto does not check at all.

A denial is answered as AWS answers it (EC2: 403 UnauthorizedOperation; IAM: 403 AccessDenied; S3: 403
AccessDenied, application/xml; a DeleteObjects with any key denied is refused whole, where S3 answers 200 with a
per-key AccessDenied). A role-session request this module allowed is not checked again by moto (its evaluator would
deny any Resource other than `*`, as it checks EC2 actions against `*`). Installed by `install(server)` in the
emulator process (local/emulator.py). The moto internals used here are pinned by
tests/unit/test_iam_conditions.py::test_moto_contract_*; the S3 side is tested by tests/unit/test_iam_conditions_s3.py.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from local.iam_policy import IDENTITY, Decision, Request, UnsupportedPolicy, explain

logger = logging.getLogger("ec2jobs.iam")
EC2_SERVICE_PRINCIPAL = "ec2.amazonaws.com"
_CREDENTIAL = re.compile(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/")
_QUERY_CREDENTIAL = re.compile(r"([^/]+)/\d+/([^/]+)/(s3)/aws4_request")  # presigned SigV4 (S3 only)
_SIGV2 = re.compile(r"AWS ([^:\s]+):")  # S3's SigV2 Authorization header
S3_UNMAPPED_ACTION = "s3:UnmappedRequest"
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
    session_policy: str | None = None  # the Policy given to AssumeRole (JSON text), as moto stores it


@dataclass(frozen=True)
class Denial:
    service: str
    action: str
    resource: str
    principal: str
    detail: str = ""
    policy_type: str = IDENTITY  # which policy type denied (local.iam_policy: IDENTITY, BOUNDARY, SESSION)
    explicit: bool = False


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


def role_session(access_key_id: str) -> tuple[Any, str | None, str, str, str | None] | None:
    """(moto role, instance ARN or None, account, session name, session policy or None) when this key is a role
    session; the instance ARN when it is an instance's role credentials: a session of the role in the instance
    profile associated with the instance whose id is the session name (as EC2 names them); the session policy is
    the `Policy` given to AssumeRole (moto's AssumedRole.policy)."""
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
                    return role, instance, account, session.session_name, session.policy
            return role, None, account, session.session_name, session.policy
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
        role, instance_arn, account, session_name, session_policy = found
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
            session_policy,
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


# -- S3: which IAM actions a REST request asks -------------------------------------------------------------------

# Query parameters that select a sub-resource (S3's signing list and newer ones); any other parameter (prefix,
# list-type, x-id, response-*, ...) only shapes the answer. https://docs.aws.amazon.com/AmazonS3/latest/API/RESTAuthentication.html
_S3_SUBRESOURCE_NAMES = (
    "accelerate acl analytics attributes cors delete encryption intelligent-tiering inventory legal-hold lifecycle "
    "location logging metadataTable metrics notification object-lock ownershipControls partNumber policy "
    "policyStatus publicAccessBlock replication requestPayment restore retention select session tagging torrent "
    "uploadId uploads versionId versioning versions website"
)
_S3_SUBRESOURCES = frozenset(_S3_SUBRESOURCE_NAMES.split())
# (method, sub-resources) -> action, for objects; `versionId` picks the *Version action where S3 has one
_S3_OBJECT_ACTIONS: dict[tuple[str, frozenset[str]], str] = {
    ("GET", frozenset()): "s3:GetObject",
    ("HEAD", frozenset()): "s3:GetObject",
    ("GET", frozenset({"uploadId"})): "s3:ListMultipartUploadParts",
    ("GET", frozenset({"tagging"})): "s3:GetObjectTagging",
    ("GET", frozenset({"acl"})): "s3:GetObjectAcl",
    ("PUT", frozenset()): "s3:PutObject",
    ("PUT", frozenset({"uploadId"})): "s3:PutObject",  # UploadPart (partNumber is set aside below)
    ("PUT", frozenset({"tagging"})): "s3:PutObjectTagging",
    ("PUT", frozenset({"acl"})): "s3:PutObjectAcl",
    ("POST", frozenset({"uploads"})): "s3:PutObject",  # CreateMultipartUpload
    ("POST", frozenset({"uploadId"})): "s3:PutObject",  # CompleteMultipartUpload
    ("DELETE", frozenset()): "s3:DeleteObject",
    ("DELETE", frozenset({"uploadId"})): "s3:AbortMultipartUpload",
    ("DELETE", frozenset({"tagging"})): "s3:DeleteObjectTagging",
}
_S3_VERSIONED = {"s3:GetObject": "s3:GetObjectVersion", "s3:DeleteObject": "s3:DeleteObjectVersion"}
_S3_BUCKET_ACTIONS: dict[tuple[str, frozenset[str]], str] = {
    ("GET", frozenset()): "s3:ListBucket",  # ListObjects, ListObjectsV2 (list-type=2)
    ("HEAD", frozenset()): "s3:ListBucket",  # HeadBucket
    ("GET", frozenset({"versions"})): "s3:ListBucketVersions",
    ("GET", frozenset({"uploads"})): "s3:ListBucketMultipartUploads",
    ("GET", frozenset({"location"})): "s3:GetBucketLocation",
    ("PUT", frozenset()): "s3:CreateBucket",
    ("DELETE", frozenset()): "s3:DeleteBucket",
}
_S3_LIST_KEYS = {"prefix": "s3:prefix", "delimiter": "s3:delimiter", "max-keys": "s3:max-keys"}


@dataclass(frozen=True)
class S3Call:
    """An S3 REST request as IAM sees it: bucket ("" for the service), URL-decoded key (None for a bucket or
    the service), query (blank values kept), the decoded x-amz-copy-source, DeleteObjects' keys."""

    method: str
    bucket: str
    key: str | None
    query: Mapping[str, list[str]] = field(default_factory=dict)
    copy_source: str | None = None
    delete_keys: tuple[str, ...] | None = None  # None: not a DeleteObjects request, or a body that was not read
    access_point: bool = False


class _Host:
    """What moto's S3Response.subdomain_based_buckets reads of a request."""

    def __init__(self, host: str, url: str) -> None:
        self.headers = {"host": host} if host else {}
        self.url = url


def s3_call(environ: Mapping[str, Any], body: bytes | None = None) -> S3Call:
    """Bucket and key exactly as moto's server tells them apart (path-style `/<bucket>/<key>`, or virtual-host
    style `<bucket>.s3....` / `<bucket>.localhost`); `body`: DeleteObjects' XML, when read."""
    from moto.s3.responses import S3Response
    from moto.s3.utils import bucket_name_from_url

    # PATH_INFO is the percent-decoded path, as latin-1 text of its bytes (PEP 3333): keys are UTF-8
    path = str(environ.get("PATH_INFO") or "/").encode("latin-1").decode("utf-8", errors="replace")
    host = str(environ.get("HTTP_HOST") or "")
    query = parse_qs(str(environ.get("QUERY_STRING") or ""), keep_blank_values=True)
    if S3Response.subdomain_based_buckets(_Host(host, f"http://{host}{path}")):
        bucket = bucket_name_from_url(f"http://{host}{path}") or ""
        key: str | None = path[1:] if path.startswith("/") else path
    else:
        parts = path.lstrip("/").split("/")
        bucket = parts[0]
        key = "/".join(path.split("/")[2:])
    copy_source = environ.get("HTTP_X_AMZ_COPY_SOURCE")
    delete_keys = None
    if body is not None:
        try:
            root = ElementTree.fromstring(body)  # noqa: S314 - loopback only; what the SDK sends
            delete_keys = tuple(e.text or "" for e in root.iter() if e.tag.rpartition("}")[2] == "Key")
        except ElementTree.ParseError:
            delete_keys = None
    return S3Call(
        method=str(environ.get("REQUEST_METHOD") or "GET").upper(),
        bucket=bucket,
        key=key or None,
        query=query,
        copy_source=unquote(str(copy_source)) if copy_source else None,
        delete_keys=delete_keys,
        access_point=".s3-accesspoint." in host,
    )


def _s3_unmapped(resource: str, context: Mapping[str, str]) -> list[Request]:
    return [Request(S3_UNMAPPED_ACTION, resource, context)]


def s3_questions(principal: Principal, call: S3Call) -> list[Request]:
    """The authorisation questions S3 asks for this request (pure): the IAM action(s) S3 documents for it
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-policy-actions.html), each on
    `arn:aws:s3:::<bucket>[/<key>]`; anything not mapped here: S3_UNMAPPED_ACTION (only `s3:*`-style allows)."""
    base = dict(principal.context)
    subresources = frozenset(call.query) & _S3_SUBRESOURCES
    if call.access_point:
        return _s3_unmapped("*", base)
    if not call.bucket:  # the service: ListBuckets
        if call.method == "GET" and not subresources:
            return [Request("s3:ListAllMyBuckets", "*", base)]
        return _s3_unmapped("*", base)
    bucket_arn = f"arn:aws:s3:::{call.bucket}"
    if call.key is None:
        if call.method == "POST" and subresources == {"delete"}:
            if call.delete_keys is None:
                return _s3_unmapped(bucket_arn, base)
            return [Request("s3:DeleteObject", f"{bucket_arn}/{key}", base) for key in call.delete_keys]
        action = _S3_BUCKET_ACTIONS.get((call.method, subresources))
        if action is None:
            return _s3_unmapped(bucket_arn, base)
        context = dict(base)
        if call.method == "GET" and action in {"s3:ListBucket", "s3:ListBucketVersions"}:
            for parameter, condition_key in _S3_LIST_KEYS.items():
                values = call.query.get(parameter)
                if values is not None:
                    context[condition_key] = values[0]
            # no prefix parameter: "" (the whole bucket), which is what IAM's home-folder examples match with
            # `"s3:prefix": ""`; a StringLike on a folder matches neither (docs/artifacts.md)
            context.setdefault("s3:prefix", "")
        return [Request(action, bucket_arn, context)]
    object_arn = f"{bucket_arn}/{call.key}"
    versioned = "versionId" in subresources
    plain = subresources - {"partNumber", "versionId"}
    action = _S3_OBJECT_ACTIONS.get((call.method, plain))
    if action is None or (versioned and (plain or action not in _S3_VERSIONED)):
        return _s3_unmapped(object_arn, base)
    if versioned:
        action = _S3_VERSIONED[action]
    asked = [Request(action, object_arn, base)]
    if call.method == "PUT" and call.copy_source is not None and not plain - {"uploadId"}:
        # CopyObject / UploadPartCopy: also read access to the source (`<bucket>/<key>[?versionId=...]`)
        source, _, source_query = call.copy_source.lstrip("/").partition("?")
        read = "s3:GetObjectVersion" if "versionId" in parse_qs(source_query) else "s3:GetObject"
        asked.append(Request(read, f"arn:aws:s3:::{source}", base))
    return asked


def session_policy(principal: Principal) -> dict[str, Any] | None:
    """The role session's session policy document, None when AssumeRole was given none; UnsupportedPolicy when it
    is not a JSON object (AWS refuses such a Policy at AssumeRole; moto stores whatever it was given)."""
    if principal.session_policy is None:
        return None
    try:
        document = json.loads(principal.session_policy)
    except ValueError as error:
        raise UnsupportedPolicy(f"the session policy is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise UnsupportedPolicy("the session policy is not a JSON object")
    return document


def check(
    access_key_id: str,
    service: str,
    operation: str,
    region: str,
    form: Mapping[str, list[str]],
    s3: S3Call | None = None,
) -> tuple[Principal | None, Denial | None]:
    """(principal, denial or None). A policy the evaluator cannot read denies (loudly), never allows. `s3`: the
    request, for S3 (evaluated for role sessions only; other principals are left to moto)."""
    principal = principal_for(access_key_id)
    if principal is None:
        return None, None
    if s3 is not None:
        if principal.kind != "role":
            return principal, None
        asked = s3_questions(principal, s3)
    else:
        asked = questions(principal, service, operation, region, form)
    for request in asked:
        try:
            decision, policy_type = explain(principal.policies, request, principal.boundary, session_policy(principal))
        except UnsupportedPolicy as error:
            logger.warning("ec2jobs emulator cannot evaluate %s's policy: %s", principal.arn, error)
            return principal, Denial(service, request.action, request.resource, principal.arn, f" ({error})")
        if decision is not Decision.ALLOW:
            return principal, Denial(
                service,
                request.action,
                request.resource,
                principal.arn,
                policy_type=policy_type or IDENTITY,
                explicit=decision is Decision.EXPLICIT_DENY,
            )
    return principal, None


# -- the HTTP side -------------------------------------------------------------------------------------------------


def denial_message(denial: Denial) -> str:
    """AWS's access-denied sentence, naming the policy type that denied
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html)."""
    article = "an" if denial.policy_type[0] in "aeiou" else "a"
    reason = (
        f"with an explicit deny in {article} {denial.policy_type}"
        if denial.explicit
        else f"because no {denial.policy_type} allows the {denial.action} action"
    )
    return (
        f"User: {denial.principal} is not authorized to perform: {denial.action} on resource: {denial.resource} "
        f"{reason}{denial.detail}"
    )


def denial_response(denial: Denial) -> tuple[str, str, bytes]:
    """(status, content type, body) shaped like AWS's answer for the service."""
    message = denial_message(denial)
    if denial.service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            f"<Message>{escape(message)}</Message><RequestId>{_request_id()}</RequestId></Error>"
        )
        return "403 Forbidden", "application/xml", body.encode()
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


def _request_id() -> str:
    return uuid.uuid4().hex[:16].upper()


def _signer(environ: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(access key id, region, service) of a signed request: SigV4's Authorization header; for S3 also a presigned
    SigV4 URL (X-Amz-Credential) and SigV2 (`Authorization: AWS <key>:...`, or AWSAccessKeyId in the query)."""
    authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
    match = _CREDENTIAL.search(authorization)
    if match is not None:
        return match.group(1), match.group(2), match.group(3)
    v2 = _SIGV2.match(authorization)
    if v2 is not None:
        return v2.group(1), "", "s3"
    if authorization:
        return None
    query = parse_qs(str(environ.get("QUERY_STRING") or ""))
    presigned = _QUERY_CREDENTIAL.fullmatch((query.get("X-Amz-Credential") or [""])[0])
    if presigned is not None:
        return presigned.group(1), presigned.group(2), "s3"
    if "AWSAccessKeyId" in query and "Signature" in query and "Action" not in query:  # S3 SigV2 presigned
        return query["AWSAccessKeyId"][0], "", "s3"
    return None


class IamConditionsMiddleware:
    """WSGI middleware in front of moto (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        signer = _signer(environ)
        if signer is None:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        key, region, service = signer
        s3: S3Call | None = None
        form: dict[str, list[str]] = {}
        if service == "s3":  # an upload's body is left unread (streamed to moto), but for DeleteObjects' keys
            operation = str(environ.get("REQUEST_METHOD") or "")
            body = None
            if operation == "POST" and "delete" in parse_qs(str(environ.get("QUERY_STRING") or ""), True):
                body = self._read_body(environ)
            s3 = s3_call(environ, body)
        else:
            body = self._read_body(environ)
            target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
            form = {} if target else parse_qs(body.decode(errors="replace"))
            operation = target.rpartition(".")[2] if target else (form.get("Action") or [""])[0]
        try:
            principal, denial = check(key, service, operation, region, form, s3)
        except Exception:  # never let the checker's own failure look like an AWS answer
            logger.exception("IAM condition check failed for %s:%s", service, operation)
            raise
        if denial is not None:
            status, content_type, payload = denial_response(denial)
            if str(environ.get("REQUEST_METHOD")) == "HEAD":
                payload = b""  # S3 answers a HEAD with the status alone
            start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(payload)))])
            return [payload]
        token = _authorized.set(principal is not None and principal.kind == "role")
        try:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        finally:
            _authorized.reset(token)

    @staticmethod
    def _read_body(environ: dict[str, Any]) -> bytes:
        """Read the request body and put it back for moto."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        return bytes(body)


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
