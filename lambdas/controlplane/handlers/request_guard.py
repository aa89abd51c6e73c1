"""Checks a JSON request body before anything parses it (pure): media type, size, UTF-8, nesting depth, JSON syntax.

A body that fails here never reaches pydantic or a service, and the answer never echoes the body: a form-encoded
or multipart body is refused for its media type (415) before it is read, so none of its text can come back in a
message. See docs/api.md ("Limits")."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

# A job's setup and run may be megabytes (stored in the artifacts bucket, not in the job item); under Lambda's 6 MB
# invocation payload with room for JSON escaping and the event around the body.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 32  # the task spec nests 3 levels; nothing legitimate needs more
JSON_MEDIA_TYPE = "application/json"
_CHARSETS = {"utf-8", "utf8", "us-ascii"}
_TOKEN = re.compile(r'["\\\[\]{}]')


@dataclass(frozen=True)
class Rejection:
    status: int
    code: str
    message: str
    details: list[dict[str, str]] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


def header(headers: dict[str, Any] | None, name: str) -> str | None:
    """A header's value, whatever its case (API Gateway passes names as the client sent them)."""
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return str(value) if value is not None else None
    return None


def check_media_type(content_type: str | None) -> Rejection | None:
    """JSON (UTF-8) only. A missing Content-Type is read as JSON, as the API always has."""
    if content_type is None or not content_type.strip():
        return None
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != JSON_MEDIA_TYPE:
        return Rejection(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"the request body must be JSON: send Content-Type: {JSON_MEDIA_TYPE}",
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _CHARSETS:
            return Rejection(415, "UNSUPPORTED_MEDIA_TYPE", "JSON request bodies must be UTF-8 (charset=utf-8)")
    return None


def decode_body(body: str | None, is_base64: bool) -> str | Rejection:
    """The body as text. A base64-encoded body (binary media types) must decode to strict UTF-8: invalid bytes are
    a 400, never replaced."""
    raw = body or ""
    if is_base64:
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return Rejection(400, "INVALID_ENCODING", "the request body could not be decoded")
        if len(data) > MAX_BODY_BYTES:
            return _too_large()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejection(
                400, "INVALID_ENCODING", f"the request body is not valid UTF-8 (first bad byte at offset {error.start})"
            )
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: the front could not have received these as UTF-8
        return Rejection(400, "INVALID_ENCODING", "the request body is not valid UTF-8")
    if size > MAX_BODY_BYTES:
        return _too_large()
    return raw


def _too_large() -> Rejection:
    return Rejection(
        413,
        "PAYLOAD_TOO_LARGE",
        f"the request body exceeds {MAX_BODY_BYTES:,} bytes: put very long `run` or `setup` text in a script in your "
        "workdir and call it",
    )


def json_depth(text: str, stop_at: int = MAX_JSON_DEPTH + 1) -> int:
    """The deepest nesting of arrays and objects in `text` (brackets inside strings skipped), without parsing it:
    one linear pass, stopping once `stop_at` is reached."""
    depth = deepest = 0
    in_string = False
    skip_to = -1
    for match in _TOKEN.finditer(text):
        position, char = match.start(), match.group()
        if position < skip_to:
            continue
        if in_string:
            if char == "\\":
                skip_to = position + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest >= stop_at:
                break
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_json(text: str) -> Rejection | None:
    """The body parses as standard JSON (no NaN/Infinity) nested at most MAX_JSON_DEPTH deep. An empty body is left
    to the route's own validation (it says the body is required)."""
    if not text.strip():
        return None
    if json_depth(text) > MAX_JSON_DEPTH:
        return Rejection(400, "INVALID_JSON", f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError, NaN, or an integer of more than 4,300 digits
        details = [{"field": "body", "message": "the request body is not valid JSON"}]
        return Rejection(422, "VALIDATION_ERROR", "body: the request body is not valid JSON", details)
    return None


def check_body(event: dict[str, Any]) -> str | Rejection:
    """Every check, in order; the body as text when it passes."""
    rejection = check_media_type(header(event.get("headers"), "content-type"))
    if rejection is not None:
        return rejection
    text = decode_body(event.get("body"), bool(event.get("isBase64Encoded")))
    if isinstance(text, Rejection):
        return text
    return check_json(text) or text
