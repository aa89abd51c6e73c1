"""A local stand-in for API Gateway (REST): turns a request into the TOKEN-authorizer event and the proxy event,
runs the authorizer, then the api handler, with API Gateway's own 401/403 behaviour."""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.lambda_context import LocalLambdaContext

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


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
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        authorizer_context: dict[str, Any] | None = None
        if (method, path) not in self.public_routes:
            authorized = self._authorize(method, path, headers)
            if isinstance(authorized, HttpResponse):
                return authorized
            authorizer_context = authorized
        event = self._proxy_event(method, path, headers, query or {}, body, authorizer_context)
        result = self.api_handler(event, LocalLambdaContext("api", region=self.region))
        response_headers = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            response_headers[name] = ", ".join(str(v) for v in values)
        return HttpResponse(int(result["statusCode"]), response_headers, result.get("body") or "")

    def _method_arn(self, method: str, path: str) -> str:
        return f"arn:aws:execute-api:{self.region}:{self.account_id}:{self.api_id}/{self.stage}/{method}{path}"

    def _authorize(self, method: str, path: str, headers: dict[str, str]) -> dict[str, Any] | HttpResponse:
        token = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        unauthorized = HttpResponse(401, {"Content-Type": "application/json"}, json.dumps({"message": "Unauthorized"}))
        if not token:  # API Gateway answers 401 itself when a TOKEN authorizer's header is missing
            return unauthorized
        method_arn = self._method_arn(method, path)
        event = {"type": "TOKEN", "authorizationToken": token, "methodArn": method_arn}
        try:
            policy = self.authorizer_handler(event, LocalLambdaContext("authorizer", region=self.region))
        except Exception as error:  # noqa: BLE001 - API Gateway's contract: "Unauthorized" → 401, else 500
            if str(error) == "Unauthorized":
                return unauthorized
            return HttpResponse(500, {"Content-Type": "application/json"}, json.dumps({"message": None}))
        if not _allows(policy.get("policyDocument", {}), method_arn):
            return HttpResponse(
                403,
                {"Content-Type": "application/json"},
                json.dumps({"message": "User is not authorized to access this resource with an explicit deny"}),
            )
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
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", errors="replace") if length else None
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
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

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
