"""PS3.7 D.3.3.7 user identity: what storescu's ``--user``/``--password``/``--kerberos``/
``--saml``/``--jwt`` and the YAML ``identity`` block describe, and its negotiation item
(encoded by :mod:`forwarder.scu.acse`; a type 2 passcode may be empty, as storescu's
``--empty-password`` sends it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forwarder.errors import UsageError


@dataclass(frozen=True)
class IdentitySettings:
    """PS3.7 D.3.3.7 user identity: type 1..5 and whether a positive response is required."""

    kind: int = 0  # 0 none, 1 user, 2 user+passcode, 3 kerberos, 4 saml, 5 jwt
    primary: bytes = b""
    secondary: bytes = b""
    positive_response: bool = False


TOKENS = {3: "Kerberos service ticket", 4: "SAML assertion", 5: "JSON web token"}


def empty_token(path: str, kind: int) -> str:
    """What is wrong with a token file of identity ``kind`` that is there but empty."""
    return f"{path} is empty: it should hold the {TOKENS[kind]} sent as the user identity"


def identity_item(identity: IdentitySettings) -> bytes | None:
    """The encoded user identity sub-item of an A-ASSOCIATE-RQ; None: no identity."""
    if not identity.kind:
        return None
    from forwarder.scu.acse import user_identity_item

    return user_identity_item(identity.kind, identity.primary, identity.secondary,
                              identity.positive_response)


def identity_from_files(user: str | None, password: str | None, kerberos: str | None,
                        saml: str | None, jwt: str | None, positive: bool) -> IdentitySettings:
    """Build the identity from storescu's options or the YAML keys (secrets read from files;
    an empty token file is refused, as storescu refuses it)."""
    def token(kind: int, path: str) -> IdentitySettings:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        if not data:
            raise UsageError(empty_token(path, kind))
        return IdentitySettings(kind, data, b"", positive)

    if kerberos:
        return token(3, kerberos)
    if saml:
        return token(4, saml)
    if jwt:
        return token(5, jwt)
    if user:
        if password is not None:
            return IdentitySettings(2, user.encode(), password.encode(), positive)
        return IdentitySettings(1, user.encode(), b"", positive)
    return IdentitySettings()
