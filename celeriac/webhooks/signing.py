"""Standard Webhooks signatures, made with the spec's reference library.

``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
where the key is the base64 part of a ``whsec_<base64>`` secret. Receivers verify it
with any Standard Webhooks library and reject timestamps more than five minutes off.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from celeriac.webhooks.errors import InvalidSecret

SECRET_PREFIX = "whsec_"


def encode_body(payload: dict[str, Any]) -> str:
    """The exact text that is signed and sent (as UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def signer(secret: str) -> Webhook:
    """The reference library's signer, after a stricter check of the secret than
    the library's own (which drops characters that are not base64 silently)."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret("webhook secrets look like whsec_<base64>")
    key = secret[len(SECRET_PREFIX) :]
    try:
        decoded = base64.b64decode(key + "=" * (-len(key) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("webhook secret is not valid base64 after whsec_") from None
    if len(decoded) < 16:
        raise InvalidSecret("webhook secret must hold at least 16 bytes")
    return Webhook(secret)


def signature_headers(secret: str, *, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signer(secret).sign(msg_id, moment, body),
    }
