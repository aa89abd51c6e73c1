"""API Gateway TOKEN authorizer: `Authorization: Bearer <token>` → the team it belongs to (tokens are stored
hashed). An unknown, malformed, expired or revoked token, or one of a deleted team, is a 401 ("Unauthorized" is API
Gateway's contract for that). API Gateway caches the answer per token for stacks/api.py AUTHORIZER_CACHE (300 s):
that is how long a revocation can take to bite. The team's usage key, when it has one, is returned as
`usageIdentifierKey`, so that the stack's usage plan throttles each team on its own (docs/tokens.md)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerResponse,
    APIGatewayAuthorizerTokenEvent,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.handlers import container

logger = Logger(service="ec2jobs-authorizer")


def token_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = APIGatewayAuthorizerTokenEvent(event)
    token = token_from_header(request.authorization_token)
    principal = container.get().teams.authorize(token) if token else None
    if principal is None:
        logger.info("rejected a request with a missing, unknown, expired or revoked token")
        raise Exception("Unauthorized")  # noqa: TRY002 - API Gateway maps exactly this message to 401
    arn = request.parsed_arn
    response = APIGatewayAuthorizerResponse(
        principal_id=principal.team_id,
        region=arn.region,
        aws_account_id=arn.aws_account_id,
        api_id=arn.api_id,
        stage=arn.stage,
        context={"team_id": principal.team_id, "token_id": principal.token_id},
        usage_identifier_key=principal.usage_key,
    )
    response.allow_all_routes()  # the result is cached per token for all routes; routes check the team themselves
    return response.asdict()
