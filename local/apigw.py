"""A local stand-in for API Gateway (REST): turns a request into the TOKEN-authorizer event and the proxy event,
runs the authorizer, then the api handler, with API Gateway's own 401/403/413 behaviour answered in the API's
error shape ({code, message}: the deployed stack's gateway responses, docs/api.md).

Bodies: API Gateway passes a text body to the proxy event as it is; bytes that are not UTF-8 arrive base64-encoded
with isBase64Encoded (as a binary media type does), so the handler can refuse them rather than see replacement
characters. Every method reaches the handler (as an ANY method on each resource would), which answers 405 for
one a path does not have."""

from __future__ import annotations

import base64
import fnmatch
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.lambda_context import LocalLambdaContext

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's REST payload quota (10 MB)
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def error_response(status: int, code: str, message: str) -> HttpResponse:
    """An answer API Gateway gives itself (no Lambda ran), in the API's error shape."""
    return HttpResponse(status, dict(JSON_HEADERS), json.dumps({"code": code, "message": message}))


_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _invoke(handler: Handler, event: dict[str, Any], context: Any) -> Any:
    """Call a Lambda handler as one execution environment would: one invocation at a time. A Lambda environment
    never runs two invocations at once, so handlers keep per-invocation state on module-level objects (Powertools'
    resolver keeps the current route on the app); the threaded local front must not call them concurrently."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(id(handler), threading.Lock())
    with lock:
        return handler(event, context)


@dataclass
class LocalApiGateway:
    api_handler: Handler
    authorizer_handler: Handler
    public_routes: frozenset[tuple[str, str]]
    region: str = "us-east-1"
    account_id: str = "123456789012"
    api_id: str = "local"
    stage: str = "local"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: str | bytes | dict[str, Any] | None = None,
    ) -> HttpResponse:
        method = method.upper()
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        is_base64 = False
        if isinstance(body, bytes):
            if len(body) > MAX_PAYLOAD_BYTES:
                return error_response(413, "PAYLOAD_TOO_LARGE", f"the request exceeds {MAX_PAYLOAD_BYTES} bytes")
            raw = body
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError:
                body, is_base64 = base64.b64encode(raw).decode("ascii"), True
        authorizer_context: dict[str, Any] | None = None
        if path not in {public_path for _, public_path in self.public_routes}:
            authorized = self._authorize(method, path, headers)
            if isinstance(authorized, HttpResponse):
                return authorized
            authorizer_context = authorized
        event = self._proxy_event(method, path, headers, query or {}, body, authorizer_context)
        event["isBase64Encoded"] = is_base64
        result = _invoke(self.api_handler, event, LocalLambdaContext("api", region=self.region))
        response_headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            response_headers[name] = ", ".join(str(v) for v in values)
        return HttpResponse(int(result["statusCode"]), response_headers, result.get("body") or "")

    def _method_arn(self, method: str, path: str) -> str:
        return f"arn:aws:execute-api:{self.region}:{self.account_id}:{self.api_id}/{self.stage}/{method}{path}"

    def _authorize(self, method: str, path: str, headers: dict[str, str]) -> dict[str, Any] | HttpResponse:
        token = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        unauthorized = error_response(401, "UNAUTHORIZED", "a valid token is required: Authorization: Bearer <token>")
        if not token:  # API Gateway answers 401 itself when a TOKEN authorizer's header is missing
            return unauthorized
        method_arn = self._method_arn(method, path)
        event = {"type": "TOKEN", "authorizationToken": token, "methodArn": method_arn}
        try:
            policy = _invoke(self.authorizer_handler, event, LocalLambdaContext("authorizer", region=self.region))
        except Exception as error:  # noqa: BLE001 - API Gateway's contract: "Unauthorized" → 401, else 500
            if str(error) == "Unauthorized":
                return unauthorized
            return error_response(500, "AUTHORIZER_FAILURE", "the authorizer failed; retry later")
        if not _allows(policy.get("policyDocument", {}), method_arn):
            return error_response(403, "FORBIDDEN", "this token may not call this route")
        return {"principalId": policy.get("principalId"), **(policy.get("context") or {}), "integrationLatency": 0}

    def _proxy_event(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        query: dict[str, str],
        body: str | None,
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        request_id = str(uuid.uuid4())
        return {
            "resource": path,
            "path": path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": query or None,
            "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} or None,
            "pathParameters": None,
            "stageVariables": None,
            "requestContext": {
                "accountId": self.account_id,
                "apiId": self.api_id,
                "stage": self.stage,
                "httpMethod": method,
                "path": f"/{self.stage}{path}",
                "resourcePath": path,
                "requestId": request_id,
                "identity": {"sourceIp": "127.0.0.1"},
                "authorizer": authorizer,
            },
            "body": body,
            "isBase64Encoded": False,
        }


def _allows(policy: dict[str, Any], method_arn: str) -> bool:
    allowed = False
    for statement in policy.get("Statement", []):
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if any(fnmatch.fnmatchcase(method_arn, pattern) for pattern in resources):
            if statement.get("Effect") == "Deny":
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


class LocalHttpApi:
    """The local API front: an HTTP server on loopback feeding LocalApiGateway (what the CLI and curl talk to)."""

    def __init__(self, gateway: LocalApiGateway, host: str = "127.0.0.1", port: int = 0) -> None:
        import http.server
        import threading
        from urllib.parse import parse_qsl, urlsplit

        from local.guard import is_loopback_host

        if not is_loopback_host(host):
            raise ValueError("the local API listens on loopback only")
        front = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                url = urlsplit(self.path)
                response = self._too_large_or_bad_length()
                if response is None:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    headers = {key: value for key, value in self.headers.items()}
                    query = dict(parse_qsl(url.query, keep_blank_values=True))
                    response = front.gateway.request(self.command, url.path, headers=headers, query=query, body=body)
                payload = response.body.encode("utf-8")
                self.send_response(response.status)
                for key, value in response.headers.items():
                    if key.lower() not in {"content-length", "connection"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":  # a HEAD answer has headers only (RFC 9110 9.3.2)
                    self.wfile.write(payload)

            def _too_large_or_bad_length(self) -> HttpResponse | None:
                raw = (self.headers.get("Content-Length") or "0").strip()
                if not raw.isascii() or not raw.isdigit():
                    self.close_connection = True
                    return error_response(400, "BAD_REQUEST", "Content-Length is not a number")
                if int(raw) > MAX_PAYLOAD_BYTES:
                    self.close_connection = True  # the body is not read: nothing else can follow on this connection
                    return error_response(413, "PAYLOAD_TOO_LARGE", f"the request exceeds {MAX_PAYLOAD_BYTES} bytes")
                return None

            def __getattr__(self, name: str) -> Any:
                # Every method (API Gateway's ANY covers HEAD and OPTIONS; TRACE, QUERY, ... too) reaches the
                # handler, which answers 405 in the error shape: never http.server's 501 HTML page.
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.gateway = gateway
        self.server = http.server.ThreadingHTTPServer((host, port), RequestHandler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="local-api")

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalHttpApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
