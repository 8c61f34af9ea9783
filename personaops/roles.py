"""Roles: one order for the HTTP API and the command line.

reader < analyst < ml-engineer < admin. `writer` (a pushed-events producer) stands outside the
order: it pushes events and reads like a reader, nothing more.

The API learns its caller's role from the bearer token. The CLI has a local identity
(`cli_identity`):

- `PERSONAS_TOKEN` set: it must be one of the configured tokens (`api.tokens` in personas.yaml or
  `PERSONAS_API_TOKENS`); its role is the CLI's role.
- no token configured at all (the embedded local profile, `make run`, the demo): the person at the
  terminal owns the workspace and is `admin`, or the lower `cli.role` of personas.yaml.
- tokens configured but no `PERSONAS_TOKEN`: the CLI has no role; every guarded command is
  refused (reading commands still work on a workspace the user can read anyway).

A denial is one sentence and an `access_denied` audit entry (actor, role, action, outcome).
"""

from __future__ import annotations

import getpass
import hmac
import os
from dataclasses import dataclass

from personaops.errors import ConfigError, PersonaOpsError

ROLES = ("reader", "analyst", "ml-engineer", "admin")
WRITER = "writer"
ALL_ROLES = (*ROLES, WRITER)
TOKEN_ENV = "PERSONAS_TOKEN"

# What each guarded CLI action needs (docs/governance.md, "Roles").
REQUIRED = {
    "models promote": "ml-engineer",
    "models rollback": "ml-engineer",
    "promotion approve": "ml-engineer",
    "promotion reject": "ml-engineer",
    "explain": "analyst",
    "ask opportunities": "analyst",  # lists person ids with reasons, like the API's /insights/opportunities
    "erase": "admin",
    "consent set": "admin",
    "consent load": "admin",
}


class AccessDeniedError(PersonaOpsError):
    """The caller's role is below what the action needs."""


def rank(role: str | None) -> int:
    """Position in reader < analyst < ml-engineer < admin; a writer ranks as a reader, no role as -1."""
    if role in ROLES:
        return ROLES.index(role)
    return 0 if role == WRITER else -1


def allows(role: str | None, minimum: str) -> bool:
    """Whether `role` may do what needs `minimum`."""
    if minimum not in ROLES:
        raise ValueError(f"unknown role {minimum!r}")
    return rank(role) >= ROLES.index(minimum)


@dataclass(frozen=True)
class Identity:
    """Who runs a CLI command: the OS user, the role, and where the role came from."""

    user: str
    role: str | None
    source: str  # "PERSONAS_TOKEN", "local (no tokens configured)", "cli.role", "none"

    @property
    def actor(self) -> str:
        return f"{self.user} ({self.role or 'no role'})"


def token_role(given: str | bytes | None, tokens: dict[str, str]) -> str | None:
    """The role of the configured token equal to `given` (None when none is), compared with every
    token by `hmac.compare_digest` so the time taken hints at nothing. The one token check of the
    API, the catalogue, the API's fast lookup path and the CLI."""
    if not given:
        return None
    given = given.encode() if isinstance(given, str) else given
    role = None
    for token, token_role in tokens.items():  # compare with every token: no timing hint
        if hmac.compare_digest(given, token.encode()):
            role = token_role
    return role


def cli_identity(cfg, environ: dict[str, str] | None = None) -> Identity:
    """The local identity of the command line (see the module docstring)."""
    from personaops.api import api_tokens

    environ = dict(os.environ) if environ is None else environ
    user = environ.get("USER") or _os_user()
    tokens = api_tokens(cfg, environ)
    given = environ.get(TOKEN_ENV, "")
    if given:
        role = token_role(given, tokens)
        if role is None:
            raise ConfigError(f"{TOKEN_ENV} matches no configured token (api.tokens in personas.yaml or PERSONAS_API_TOKENS); unset it or ask an admin for a valid one.")
        return Identity(user, role, TOKEN_ENV)
    if tokens:
        return Identity(user, None, "none")
    configured = cfg.cli.role if getattr(cfg, "cli", None) is not None else "admin"
    return Identity(user, configured, "cli.role" if configured != "admin" else "local (no tokens configured)")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still an actor
        return f"uid{os.getuid()}"


def require(ws, identity: Identity, action: str) -> Identity:
    """Refuse `action` (a key of REQUIRED) unless the identity's role is high enough; a refusal is
    audited (`access_denied`, outcome denied) and raised as one sentence."""
    minimum = REQUIRED[action]
    if allows(identity.role, minimum):
        return identity
    ws.audit("access_denied", actor=identity.user, role=identity.role, role_source=identity.source, action=action, required=minimum, outcome="denied")
    if identity.role is None:
        raise AccessDeniedError(
            f"`personas {action}` needs the '{minimum}' role, and API tokens are configured but {TOKEN_ENV} is not set; export {TOKEN_ENV} with a token of that role."
        )
    raise AccessDeniedError(
        f"`personas {action}` needs the '{minimum}' role; your CLI identity has '{identity.role}' (from {identity.source}); use a token with that role in {TOKEN_ENV}."
    )
