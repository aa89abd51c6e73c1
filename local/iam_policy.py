"""A small, strict evaluator of IAM identity policies (pure): what the emulator uses where moto is kinder than AWS.

moto's IAM enforcement ignores Condition blocks and policy variables; AWS does not. This module evaluates the
subset of the IAM policy language the ec2jobs policies use, exactly as AWS documents it, and refuses (raises
UnsupportedPolicy) anything outside that subset instead of guessing:

- Effect Allow/Deny; Action/NotAction (case-insensitive, `*` and `?` wildcards); Resource/NotResource
  (case-sensitive wildcards) with policy variables (`${aws:username}`, `${ec2:SourceInstanceARN}`, `${*}` ...);
- Condition operators StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringLike, StringNotLike, ArnEquals,
  ArnLike, ArnNotEquals, ArnNotLike, Null, each with the `...IfExists` suffix; condition keys are case-insensitive,
  values may hold policy variables;
- an explicit Deny wins; otherwise an Allow is needed in the identity policies and, when the principal has a
  permissions boundary, in the boundary too, and, when a role session was given a session policy at AssumeRole,
  in the session policy too (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html,
  https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session).

A key absent from the request context makes a positive operator false and a negated one true; a policy variable
that cannot be resolved makes its statement not apply (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

ContextValue = str | Sequence[str]


class UnsupportedPolicy(ValueError):
    """The policy uses something this evaluator does not implement: never evaluated as if it were absent."""


class Decision(Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit-deny"
    IMPLICIT_DENY = "implicit-deny"


@dataclass(frozen=True)
class Request:
    """One authorisation question: may the principal do `action` on `resource`, given this request context?"""

    action: str  # "ec2:TerminateInstances"
    resource: str  # an ARN, or "*" for actions without resource-level permissions
    context: Mapping[str, ContextValue] = field(default_factory=dict)  # condition keys (any case)

    def value(self, key: str) -> list[str] | None:
        lowered = key.lower()
        for name, value in self.context.items():
            if name.lower() == lowered:
                return [value] if isinstance(value, str) else list(value)
        return None


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}
_OPERATORS = {
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
    "Null",
}


class _Unresolved(Exception):
    pass


def substitute(text: str, request: Request, *, wildcard_escapes: bool) -> str:
    """Replace policy variables with the request's values. In a Resource or a *Like value the escapes `${*}`,
    `${?}` stay literal characters (returned as `[*]`/`[?]` for _wildcard); raises _Unresolved for a missing key."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in _ESCAPES:
            literal = _ESCAPES[name]
            return f"[{literal}]" if wildcard_escapes and literal in "*?" else literal
        name, _, default = name.partition(",")
        values = request.value(name.strip())
        if values is None or len(values) != 1:
            if default:
                return default.strip().strip("'")
            raise _Unresolved(name)
        if wildcard_escapes:  # a variable's value is literal text, never a wildcard
            return values[0].replace("*", "[*]").replace("?", "[?]")
        return values[0]

    return _VARIABLE.sub(one, text)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcards: `*` any run of characters (also across `:` and `/`), `?` one character; `[*]`/`[?]` (what
    substitute() makes of `${*}`/`${?}` and of wildcard characters inside a variable's value) are literal."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith(("[*]", "[?]"), index):
            parts.append(re.escape(pattern[index + 1]))
            index += 3
            continue
        char = pattern[index]
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        index += 1
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch("".join(parts), value, flags) is not None


def _arn_like(pattern: str, value: str) -> bool:
    """ArnLike: the six colon-separated parts match one by one (the resource part may hold more colons)."""
    wanted, actual = pattern.split(":", 5), value.split(":", 5)
    if len(wanted) != 6 or len(actual) != 6:
        return False
    return all(_wildcard(w, a) for w, a in zip(wanted, actual, strict=True))


def _condition_holds(operator: str, key: str, expected: Any, request: Request) -> bool:
    base, if_exists = (operator[: -len("IfExists")], True) if operator.endswith("IfExists") else (operator, False)
    if base.startswith(("ForAnyValue:", "ForAllValues:")) or base not in _OPERATORS:
        raise UnsupportedPolicy(f"condition operator {operator!r} is not implemented by the emulator's evaluator")
    actual = request.value(key)
    if base == "Null":
        wants_absent = {str(v).lower() for v in _as_list(expected)} == {"true"}
        return (actual is None) == wants_absent
    if actual is None:
        return if_exists or "Not" in base
    negated = "Not" in base
    like = base.endswith("Like") or base.startswith("Arn")  # ArnEquals takes wildcards like ArnLike (AWS docs)
    patterns = []
    for raw in _as_list(expected):
        try:
            patterns.append(substitute(str(raw), request, wildcard_escapes=like))
        except _Unresolved:
            continue  # a value whose variable cannot be resolved matches nothing
    matcher: Callable[[str, str], bool]
    if base.startswith("Arn"):
        matcher = _arn_like
    elif like:
        matcher = _wildcard
    elif base == "StringEqualsIgnoreCase":
        matcher = lambda p, v: p.lower() == v.lower()  # noqa: E731
    else:
        matcher = lambda p, v: p == v  # noqa: E731
    matched = any(matcher(p, v) for p in patterns for v in actual)
    return not matched if negated else matched


def _statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    if "Principal" in statement or "NotPrincipal" in statement:
        raise UnsupportedPolicy("identity policies have no Principal element")
    if "Action" in statement:
        action_hit = any(_wildcard(str(a), request.action, ignore_case=True) for a in _as_list(statement["Action"]))
    elif "NotAction" in statement:
        action_hit = not any(
            _wildcard(str(a), request.action, ignore_case=True) for a in _as_list(statement["NotAction"])
        )
    else:
        raise UnsupportedPolicy("a statement needs Action or NotAction")
    if not action_hit:
        return False
    element = "Resource" if "Resource" in statement else "NotResource" if "NotResource" in statement else None
    if element is None:
        raise UnsupportedPolicy("an identity policy statement needs Resource or NotResource")
    hits = []
    for pattern in _as_list(statement[element]):
        try:
            hits.append(_wildcard(substitute(str(pattern), request, wildcard_escapes=True), request.resource))
        except _Unresolved:
            hits.append(False)  # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html
    if (any(hits) if element == "Resource" else not any(hits)) is False:
        return False
    for operator, keys in dict(statement.get("Condition") or {}).items():
        for key, expected in dict(keys).items():
            if not _condition_holds(str(operator), str(key), expected, request):
                return False
    return True


def decide(documents: Iterable[Mapping[str, Any]], request: Request) -> Decision:
    """Explicit Deny, Allow or implicit deny for one set of policies (e.g. a principal's identity policies)."""
    allowed = False
    for document in documents:
        for statement in _as_list(document.get("Statement", [])):
            if not _statement_applies(statement, request):
                continue
            effect = statement.get("Effect")
            if effect == "Deny":
                return Decision.EXPLICIT_DENY
            if effect != "Allow":
                raise UnsupportedPolicy(f"Effect {effect!r}")
            allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


IDENTITY = "identity-based policy"
BOUNDARY = "permissions boundary"
SESSION = "session policy"


def explain(
    identity: Iterable[Mapping[str, Any]],
    request: Request,
    boundary: Mapping[str, Any] | None = None,
    session: Mapping[str, Any] | None = None,
) -> tuple[Decision, str | None]:
    """(decision, the policy type that decided a denial: IDENTITY, BOUNDARY or SESSION; None when allowed).

    Identity policies, the permissions boundary (when the principal has one) and the session policy (when the role
    session was given one at AssumeRole) must all allow; an explicit Deny in any of them wins
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session)."""
    kinds = [(IDENTITY, list(identity))]
    if boundary is not None:
        kinds.append((BOUNDARY, [boundary]))
    if session is not None:
        kinds.append((SESSION, [session]))
    decisions = [(kind, decide(documents, request)) for kind, documents in kinds]
    for kind, decision in decisions:
        if decision is Decision.EXPLICIT_DENY:
            return decision, kind
    for kind, decision in decisions:
        if decision is not Decision.ALLOW:
            return decision, kind
    return Decision.ALLOW, None


def authorize(
    identity: Iterable[Mapping[str, Any]],
    request: Request,
    boundary: Mapping[str, Any] | None = None,
    session: Mapping[str, Any] | None = None,
) -> Decision:
    """Identity policies, the permissions boundary and the session policy (each when present): all must allow."""
    return explain(identity, request, boundary, session)[0]


def allowed(
    identity: Iterable[Mapping[str, Any]],
    request: Request,
    boundary: Mapping[str, Any] | None = None,
    session: Mapping[str, Any] | None = None,
) -> bool:
    return authorize(identity, request, boundary, session) is Decision.ALLOW


__all__ = [
    "BOUNDARY",
    "IDENTITY",
    "SESSION",
    "Decision",
    "Request",
    "UnsupportedPolicy",
    "allowed",
    "authorize",
    "decide",
    "explain",
    "substitute",
]
