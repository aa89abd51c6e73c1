"""Every change ec2jobs makes to moto's behaviour, in one place (tests/unit/test_moto_contract.py fails loudly
when a moto upgrade moves what these patch). Applied inside the emulator process only.

- IAM authorisation resource: moto authorises IAM actions against the *existing* role's ARN, or `*` when the role
  does not exist yet, and ignores instance profiles entirely. Real IAM authorises CreateRole/GetRole/... against
  `arn:aws:iam::<account>:role/<name>` and the instance-profile actions against
  `arn:aws:iam::<account>:instance-profile/<name>`, which is what the seed policy's resource patterns name.
- Lambda invocation: moto runs functions in Docker. Here a function's handler (`module.function` of the single
  Lambda asset, importable in this process) is called in-process with the function's environment variables and a
  Lambda-like context; an exception becomes the Lambda error payload {errorMessage, errorType}, so Step Functions
  sees the exception class as the error name, as on AWS.
- EventBridge targets: moto raises NotImplementedError for Lambda and Step Functions targets. Here a rule invokes
  a Lambda target asynchronously (a thread, like EventBridge) and starts an execution of a state machine target
  with the event (or the target's Input / InputPath) as input.
- S3 presigned URLs under IAM enforcement: moto's authoriser reads the `Authorization` header that a presigned
  request (query-string SigV4) does not have, and answers 500. Here such a request is authorised as AWS does: 403
  `AccessDenied` "Request has expired" once `X-Amz-Date` + `X-Amz-Expires` has passed
  (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html), else the signer's permissions
  (moto's evaluator, for the access key in `X-Amz-Credential`; role sessions are checked by local/iam_conditions.py).
- S3 full-object checksums of multipart uploads: an upload created without a checksum algorithm gets S3's default,
  a full-object CRC64NVME (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).
  Without the optional awscrt moto stores a CRC32 of the whole object instead, and gets there by copying every
  part into one buffer and that buffer once more before hashing: two extra copies of the object, in the emulator
  process, on this machine's shared cores (about 0.3 s for 200 MB), which S3 does not make its client wait for.
  Here that CRC32 is computed part by part as the parts are joined (binascii.crc32 carries its running value), so
  the stored checksum is the same value, without the copies. Every other algorithm and type is moto's own code.
- Step Functions callback tasks (`.waitForTaskToken` with `HeartbeatSeconds`): moto registers the task token before
  the task's Lambda runs but arms the heartbeat wait only after it returned, and reads a callback's result only when
  that wait wakes. A SendTaskSuccess/Failure sent in between (a relay shard reporting a job that was already
  cancelled when it enrolled) was stored and never read: the task timed out after HeartbeatSeconds. AWS completes
  the task with it. Here arming the wait wakes it at once when the result is already there.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import uuid
from typing import Any

_APPLIED: set[str] = set()
_ENV_LOCK = threading.Lock()
logger = logging.getLogger("ec2jobs.emulator")


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


def call_handler(handler: str, event: Any, environment: dict[str, str], function_name: str, timeout: float) -> Any:
    """Run a Lambda handler in this process, as the Lambda runtime would (pure enough to unit-test)."""
    from local.lambda_context import LocalLambdaContext

    with _ENV_LOCK:
        changed = any(os.environ.get(name) != value for name, value in environment.items())
        os.environ.update(environment)
        if changed:  # the handlers read typed config once per process: re-read it when it changed
            from controlplane import config

            config.get.cache_clear()
    module_name, _, function = handler.rpartition(".")
    target = getattr(importlib.import_module(module_name), function)
    return target(event, LocalLambdaContext(function_name=function_name, timeout_seconds=timeout))


def error_payload(error: BaseException) -> dict[str, Any]:
    return {"errorMessage": str(error), "errorType": type(error).__name__, "stackTrace": []}


def _patch_lambda_in_process() -> None:
    from moto.awslambda.models import LambdaFunction

    from local import faults

    def invoke_in_process(self: Any, event: Any = None) -> tuple[str, bool, str]:
        payload = {} if event is None else event
        parsed = json.loads(payload) if isinstance(payload, str | bytes) and payload else payload
        name = str(self.function_name)
        refused = faults.before_invoke(name, parsed)  # the fault plan (local/faults.py), if any
        if refused is not None:
            return json.dumps(refused), True, ""
        job_token, lambda_token = faults.current_job.set(faults.lambda_job(parsed)), faults.in_lambda.set(True)
        try:
            result = call_handler(
                str(self.handler),
                payload,
                {str(k): str(v) for k, v in dict(self.environment_vars or {}).items()},
                name,
                float(self.timeout or 30),
            )
        except Exception as error:  # noqa: BLE001 - the Lambda runtime turns any exception into an error payload
            logger.info("function %s raised %s: %s", self.function_name, type(error).__name__, error)
            return json.dumps(error_payload(error)), True, ""
        finally:
            faults.current_job.reset(job_token)
            faults.in_lambda.reset(lambda_token)
        lost = faults.after_invoke(name, parsed)
        if lost is not None:
            return json.dumps(lost), True, ""
        return json.dumps(result), False, ""

    LambdaFunction._invoke_lambda = invoke_in_process  # type: ignore[method-assign]


def target_input(target: dict[str, Any], event: dict[str, Any]) -> Any:
    """What a rule hands its target: the target's constant Input, the InputPath part ($.detail), or the event."""
    if "Input" in target:
        return json.loads(str(target["Input"]))
    path = str(target.get("InputPath") or "$")
    value: Any = event
    for part in [p for p in path.removeprefix("$").split(".") if p]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _patch_event_targets() -> None:
    from moto.events.models import Rule
    from moto.utilities.arns import parse_arn

    from local import faults

    original = Rule.send_to_targets
    lock = threading.Lock()

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        if not self.event_pattern.matches_event(original_event):
            return
        ours = [t for t in self.targets if parse_arn(t["Arn"]).service in {"lambda", "states"}]
        others = [t for t in self.targets if t not in ours]
        deliveries = faults.event_deliveries(dict(original_event)) if ours else []  # the fault plan, if any
        for delay in deliveries:
            for target in ours:
                arn = parse_arn(target["Arn"])
                payload = target_input(target, dict(original_event))
                if arn.service == "lambda":
                    args = (arn.account, arn.region, target["Arn"], payload)
                    threading.Timer(delay, _invoke_function, args=args).start()
                elif delay <= 0:
                    _start_execution(arn.account, arn.region, target["Arn"], payload)
                else:
                    threading.Timer(
                        delay, _start_execution, args=(arn.account, arn.region, target["Arn"], payload)
                    ).start()
        if others:
            with lock:
                saved, self.targets = self.targets, others
                try:
                    original(self, original_event, transform_input)
                finally:
                    self.targets = saved

    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign]


def _invoke_function(account: str, region: str, arn: str, payload: Any) -> None:
    from moto.awslambda.utils import get_backend

    try:
        get_backend(account, region).invoke(
            function_name=arn, qualifier=None, body=json.dumps(payload), headers={}, response_headers={}
        )
    except Exception:
        logger.exception("event target %s failed", arn)


def _start_execution(account: str, region: str, arn: str, payload: Any) -> None:
    from moto.stepfunctions.responses import get_backend

    get_backend(account, region).start_execution(
        state_machine_arn=arn, name=str(uuid.uuid4()), execution_input=json.dumps(payload)
    )


def execute_state_machines() -> None:
    """Make Step Functions run definitions (moto only records executions by default)."""
    from moto.core.config import default_user_config

    default_user_config.setdefault("stepfunctions", {})["execute_state_machine"] = True


def presigned_expired(query: dict[str, list[str]], now: float) -> bool:
    """Has a query-string-signed (presigned) request expired? (X-Amz-Date is yyyymmddTHHMMSSZ, UTC.)"""
    import calendar
    import time as _time

    try:
        signed = _time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
        expires = int(query["X-Amz-Expires"][0])
    except (KeyError, IndexError, ValueError):
        return True  # malformed: AWS refuses it
    return now > calendar.timegm(signed) + expires


def _patch_presigned_s3() -> None:
    import time as _time
    from urllib.parse import parse_qs, urlparse

    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.s3.exceptions import S3ClientError

    original = ActionAuthenticatorMixin._authenticate_and_authorize_action

    def authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        headers = self.headers
        query = parse_qs(urlparse(self.uri).query)
        enforcing = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
        if not enforcing or "Authorization" in headers or "X-Amz-Credential" not in query:
            original(self, iam_request_cls, resource)
            return
        if presigned_expired(query, _time.time()):
            raise S3ClientError("AccessDenied", "Request has expired")
        credential = query["X-Amz-Credential"][0]
        synthesized = dict(headers) | {"Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, Signature=x"}
        if "X-Amz-Security-Token" in query:  # a role session's URL: moto looks its token up in the headers
            synthesized["X-Amz-Security-Token"] = query["X-Amz-Security-Token"][0]
        saved = self.headers
        self.headers = synthesized
        try:
            request = iam_request_cls(
                account_id=self.current_account,
                method=self.method,
                path=self.raw_path,
                data=self.data,
                body=self.raw_body,
                headers=synthesized,
                action=self._get_action(),
            )
            request.check_action_permitted(resource)  # the URL's signature is not re-computed (moto cannot)
        finally:
            self.headers = saved

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize  # type: ignore[method-assign]


def _patch_full_object_checksum() -> None:
    import base64
    import binascii
    import zlib

    from moto.s3 import models
    from moto.s3 import utils as s3_utils

    has_crt = bool(getattr(s3_utils, "HAS_CRT", False))

    builder = models.MultipartChecksumBuilder
    original_add, original_build = builder.addPart, builder.build

    def crc_fallback(self: Any) -> bool:
        """The case moto computes as binascii.crc32 of the whole object (see compute_checksum)."""
        if self.checksum_type != "FULL_OBJECT":
            return False
        return self.checksum_algorithm == "CRC32" or (self.checksum_algorithm == "CRC64NVME" and not has_crt)

    def add_part(self: Any, part: bytes) -> None:
        if not crc_fallback(self):
            original_add(self, part)
            return
        self.__dict__["_ec2jobs_crc32"] = zlib.crc32(part, self.__dict__.get("_ec2jobs_crc32", 0))
        self.part_count += 1

    def build(self: Any) -> tuple[str, str, int] | None:
        if not crc_fallback(self):
            built: tuple[str, str, int] | None = original_build(self)
            return built
        digest = self.__dict__.get("_ec2jobs_crc32", binascii.crc32(b"")).to_bytes(4, "big")
        return (self.checksum_type, base64.b64encode(digest).decode(), 1)

    builder.addPart = add_part  # type: ignore[method-assign]
    builder.build = build  # type: ignore[method-assign]


def _patch_early_task_callbacks() -> None:
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint, HeartbeatEndpoint

    original = CallbackEndpoint.setup_heartbeat_endpoint

    def setup_heartbeat_endpoint(self: Any, heartbeat_seconds: int) -> HeartbeatEndpoint:
        endpoint = original(self, heartbeat_seconds=heartbeat_seconds)
        if self.get_outcome() is not None:  # the callback came before the wait was armed: wake it, it reads it
            endpoint.notify()  # type: ignore[no-untyped-call]
        return endpoint

    CallbackEndpoint.setup_heartbeat_endpoint = setup_heartbeat_endpoint  # type: ignore[method-assign]


_PARTITION = threading.local()  # the partition a Query on a table (no index) is reading, in this thread


def _patch_partition_query() -> None:
    """A Query reads one partition, as on DynamoDB. moto's Table.query (no index) filters `all_items()`: every item
    of the table, sorted, per Query; under the relay fleet benchmark's load (200 jobs' chunks and pages in one
    table) that made each Query cost the whole table. Here `all_items()` called by such a Query returns that
    partition's items only (the same items the filter keeps, in the same order). tests/unit/test_moto_contract.py
    checks the results and that moto's query still reads `all_items()`."""
    from moto.dynamodb.models.table import Table

    original_query, original_all_items = Table.query, Table.all_items

    def all_items(self: Any) -> list[Any]:
        table: Any = self
        if id(getattr(_PARTITION, "table", None)) != id(table):  # (by id: `is` narrows `table` for mypy)
            return original_all_items(table)  # type: ignore[no-any-return]
        stored = table.items.get(_PARTITION.key)
        if stored is None:
            return []
        items = list(stored.values()) if table.range_key_attr else [stored]
        return sorted(items, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)

    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
        if index_name or hash_key is None:
            return original_query(self, hash_key, *args, **kwargs)
        _PARTITION.table, _PARTITION.key = self, hash_key
        try:
            return original_query(self, hash_key, *args, **kwargs)
        finally:
            _PARTITION.table = _PARTITION.key = None

    Table.query = query  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]


def apply() -> None:
    """Apply every patch once (idempotent)."""
    for name, patch in (
        ("iam_resource", _patch_iam_resource),
        ("lambda_in_process", _patch_lambda_in_process),
        ("event_targets", _patch_event_targets),
        ("presigned_s3", _patch_presigned_s3),
        ("full_object_checksum", _patch_full_object_checksum),
        ("early_task_callbacks", _patch_early_task_callbacks),
        ("partition_query", _patch_partition_query),
    ):
        if name not in _APPLIED:
            patch()
            _APPLIED.add(name)
