"""A small HTTP client for the ec2jobs API, standard library only (urllib.request).

Every method returns the API's JSON (a dict) or raises `ApiError(status, code, message)` carrying the server's
message. The bearer token is sent only in the Authorization header: it never appears in a repr, an exception or a
message (a server message that happened to echo it is redacted), and redirects are not followed (urllib would
replay the Authorization header to wherever the redirect points).
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Final

JsonObject = dict[str, Any]

USER_AGENT: Final = "ec2jobs-cli/0.1"
TERMINAL_STATUSES: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_MAX_ERROR_TEXT: Final = 300
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class ApiError(Exception):
    """An API call that did not succeed. `status` is the HTTP status (0 when the API could not be reached), `code`
    the API's error code (`INVALID_SPEC`, `NOT_FOUND`, ...; None when the body had none) and `message` the server's
    message, on one line."""

    def __init__(self, status: int, code: str | None, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        label = " ".join(part for part in (f"HTTP {self.status}" if self.status else "", self.code or "") if part)
        return f"{self.message} ({label})" if label else self.message

    def __repr__(self) -> str:
        return f"ApiError(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an HTTPError: never resend the bearer token to another URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def check_base_url(base_url: str) -> str:
    """The API's base URL without a trailing slash; ValueError unless it is an http(s) URL with a host."""
    parsed = urllib.parse.urlsplit(base_url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"the API URL must be an http:// or https:// URL with a host, not {base_url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"the API URL must not carry a query or fragment: {base_url!r}")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def _segment(value: str) -> str:
    """One path segment: an id can never add path components or a query."""
    if not value:
        raise ValueError("an id must not be empty")
    return urllib.parse.quote(value, safe="")


class Client:
    """`Client(base_url, token, timeout=30)`: one method per API route."""

    def __init__(self, base_url: str, token: str, timeout: float = 30) -> None:
        self.base_url = check_base_url(base_url)
        if not token or any(ch.isspace() for ch in token):
            raise ValueError("the API token must be a non-empty string without spaces")
        self._token = token
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if urllib.parse.urlsplit(self.base_url).hostname in _LOOPBACK_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))  # a proxy must never see loopback traffic
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r}, token=<hidden>, timeout={self.timeout!r})"

    # -- transport -------------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        url = self.base_url + path
        params = {name: str(value) for name, value in (query or {}).items() if value is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked in __init__
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", USER_AGENT)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
            location = error.headers.get("Location") if error.headers else None
            error.close()
            raise self._error(status, raw, location) from None
        except urllib.error.URLError as error:
            raise ApiError(0, "CONNECTION_ERROR", self._unreachable(error.reason)) from None
        except (OSError, http.client.HTTPException) as error:
            raise ApiError(0, "CONNECTION_ERROR", self._unreachable(error)) from None
        if status == 204 or not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            raise ApiError(
                status, "BAD_RESPONSE", f"the API answered HTTP {status} with a body that is not JSON"
            ) from None

    def _unreachable(self, reason: object) -> str:
        text = _one_line(str(reason)) or type(reason).__name__
        return self._redact(f"cannot reach the API at {self.base_url}: {text}")

    def _error(self, status: int, raw: bytes, location: str | None) -> ApiError:
        if 300 <= status < 400:
            return ApiError(status, "REDIRECT", f"the API answered with a redirect to {location or '?'} (not followed)")
        text = raw.decode("utf-8", errors="replace")
        code: str | None = None
        details: Any = None
        message = ""
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = body.get("code") if isinstance(body.get("code"), str) else None
            message = str(body.get("message") or body.get("Message") or "")
            details = body.get("details")
        elif text.strip():
            message = text[:_MAX_ERROR_TEXT]
        if not message:
            message = http.client.responses.get(status, "error")
        if status == 401 and code is None:
            code = "UNAUTHORIZED"
        return ApiError(status, code, self._redact(_one_line(message)), details)

    def _get(self, path: str, query: Mapping[str, str | int | None] | None = None) -> JsonObject:
        return _object(self._request("GET", path, query=query)[1])

    # -- catalog ---------------------------------------------------------------------------------------------

    def catalog(self, region: str | None = None, gpu: str | None = None) -> JsonObject:
        """GET /catalog: {prices, regions, gpus: [{gpu, gpu_memory_gib, counts, instance_types}], instance_types}."""
        return self._get("/catalog", {"region": region, "gpu": gpu})

    # -- providers -------------------------------------------------------------------------------------------

    def add_provider(self, name: str, region: str, access_key_id: str, secret_access_key: str) -> JsonObject:
        """POST /providers. The secret travels only in this request's body."""
        body = {
            "name": name,
            "region": region,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
        }
        return _object(self._request("POST", "/providers", body=body)[1])

    def list_providers(self) -> JsonObject:
        """GET /providers: {providers: [...]}."""
        return self._get("/providers")

    def get_provider(self, provider_id: str) -> JsonObject:
        return self._get(f"/providers/{_segment(provider_id)}")

    def delete_provider(self, provider_id: str) -> None:
        self._request("DELETE", f"/providers/{_segment(provider_id)}")

    # -- jobs ------------------------------------------------------------------------------------------------

    def submit_job(self, provider_id: str, spec: Mapping[str, Any], idempotency_key: str | None = None) -> JsonObject:
        """POST /jobs with the task spec's fields: {job_id, status, instance_type, region, hourly_price, notes}."""
        body = {**spec, "provider_id": provider_id}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return _object(self._request("POST", "/jobs", body=body, headers=headers)[1])

    def list_jobs(self, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> JsonObject:
        """GET /jobs: {jobs, next_cursor}, newest first."""
        return self._get("/jobs", {"status": status, "limit": limit, "cursor": cursor})

    def get_job(self, job_id: str) -> JsonObject:
        return self._get(f"/jobs/{_segment(job_id)}")

    def get_logs(self, job_id: str, after: str | None = None, limit: int | None = None) -> JsonObject:
        """GET /jobs/{id}/logs: {job_id, text, next_cursor, complete, final}: `final` once nothing more will come
        (stop polling), `complete` when the log is also whole (see `log_final`, `log_tail_missing`)."""
        return self._get(f"/jobs/{_segment(job_id)}/logs", {"after": after, "limit": limit})

    def cancel_job(self, job_id: str) -> JsonObject:
        """POST /jobs/{id}/cancel. An API without the route answers 404/405 (or API Gateway's 403 "Missing
        Authentication Token"): that becomes ApiError code NOT_SUPPORTED, unless the job itself does not exist."""
        try:
            return _object(self._request("POST", f"/jobs/{_segment(job_id)}/cancel")[1])
        except ApiError as error:
            missing_route = error.status in (404, 405) or (
                error.status == 403 and "missing authentication token" in error.message.lower()
            )
            if not missing_route:
                raise
            status = error.status
        self.get_job(job_id)  # raises the job's own 404 when there is no such job
        raise ApiError(
            status, "NOT_SUPPORTED", "this API does not support cancelling jobs yet (POST /jobs/{id}/cancel is missing)"
        )

    # -- uploads and outputs ---------------------------------------------------------------------------------

    def create_upload(self, kind: str, size: int, sha256: str) -> JsonObject:
        """POST /uploads: {upload_id, kind, size, part_size, parts: [{part_number, url}], expires_at}. The URLs are
        bearer credentials until they expire: never print them."""
        body = {"kind": kind, "size": size, "sha256": sha256}
        return _object(self._request("POST", "/uploads", body=body)[1])

    def refresh_upload_parts(self, upload_id: str) -> JsonObject:
        """POST /uploads/{id}/parts: fresh URLs for every part of a pending upload (same shape as create_upload)."""
        return _object(self._request("POST", f"/uploads/{_segment(upload_id)}/parts")[1])

    def complete_upload(self, upload_id: str, parts: Sequence[Mapping[str, Any]]) -> JsonObject:
        """POST /uploads/{id}/complete with every part's {part_number, etag} ([] for a single-PUT upload):
        {upload_id, kind, size, status: complete}."""
        body = {"parts": [{"part_number": int(p["part_number"]), "etag": str(p["etag"])} for p in parts]}
        return _object(self._request("POST", f"/uploads/{_segment(upload_id)}/complete", body=body)[1])

    def list_outputs(
        self, job_id: str, kind: str = "outputs", cursor: str | None = None, limit: int | None = None
    ) -> JsonObject:
        """GET /jobs/{id}/outputs: {job_id, kind, files: [{path, size, last_modified, url}], expires_at,
        next_cursor}; `kind` is outputs or checkpoints."""
        return self._get(f"/jobs/{_segment(job_id)}/outputs", {"kind": kind, "cursor": cursor, "limit": limit})

    def iter_outputs(self, job_id: str, kind: str = "outputs") -> Generator[JsonObject, None, None]:
        """Every file of a job's outputs (or checkpoints), following next_cursor."""
        cursor: str | None = None
        while True:
            page = self.list_outputs(job_id, kind, cursor)
            yield from page.get("files") or []
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # -- tokens ----------------------------------------------------------------------------------------------

    def list_tokens(self) -> JsonObject:
        """GET /tokens: {tokens: [{token_id, prefix, label, created_at, expires_at, expired, current}]} (never the
        tokens themselves)."""
        return self._get("/tokens")

    def revoke_token(self, token_id: str) -> None:
        """DELETE /tokens/{token_id}: revoke one of the team's tokens (possibly the one this client sends)."""
        self._request("DELETE", f"/tokens/{_segment(token_id)}")

    # -- limits and usage (docs/budgets.md) --------------------------------------------------------------------

    def get_limits(self) -> JsonObject:
        """GET /limits: the team's limits (every field null when none are set)."""
        return self._get("/limits")

    def get_usage(self, month: str | None = None, team_id: str | None = None) -> JsonObject:
        """GET /usage: the team's month ({spent_usd, reserved_usd, remaining_usd, ...}); an admin token gets
        {teams: [...]} (or one team's with `team_id`)."""
        return self._get("/usage", {"month": month, "team_id": team_id})

    def admin_get_limits(self, team_id: str) -> JsonObject:
        """GET /admin/teams/{team_id}/limits (admin token)."""
        return self._get(f"/admin/teams/{_segment(team_id)}/limits")

    def admin_set_limits(self, team_id: str, limits: Mapping[str, Any]) -> JsonObject:
        """PUT /admin/teams/{team_id}/limits (admin token): replaces the team's limits."""
        _, body = self._request("PUT", f"/admin/teams/{_segment(team_id)}/limits", body=dict(limits))
        return _object(body)

    def admin_clear_limits(self, team_id: str) -> None:
        """DELETE /admin/teams/{team_id}/limits (admin token)."""
        self._request("DELETE", f"/admin/teams/{_segment(team_id)}/limits")

    def follow_logs(
        self,
        job_id: str,
        poll: float = 1.0,
        after: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Generator[str, None, JsonObject]:
        """Yield the job's output as it arrives, from `after` (the start by default), until the log is final.
        Returns the last page (`yield from` gets it): `log_tail_missing(page)` says whether the end may be lost."""
        cursor = after
        while True:
            page = self.get_logs(job_id, after=cursor)
            text = str(page.get("text") or "")
            if text:
                yield text
            if page.get("next_cursor") is not None:
                cursor = str(page["next_cursor"])
            if log_final(page):
                return page
            if not text:
                sleep(poll)


def log_final(page: Mapping[str, Any]) -> bool:
    """The log ended on this page: nothing more will come, stop polling. An API from before `final` existed sends
    only `complete`, which then meant the same."""
    return bool(page["final"]) if "final" in page else bool(page.get("complete"))


def log_tail_missing(page: Mapping[str, Any]) -> bool:
    """The log ended without being whole: the instance went (cancel, spot interruption, lost) before the relay read
    everything it wrote, so output from the job's last moments may be missing."""
    return log_final(page) and not page.get("complete")


def _object(value: Any) -> JsonObject:
    if not isinstance(value, dict):
        raise ApiError(0, "BAD_RESPONSE", "the API answered with something other than a JSON object")
    return value
