"""Webhook errors, under Celeriac's one error base.

CeleriacError
└── WebhookError
    ├── UrlRefused        (permanent; also an InvalidRequest, 422 at submission)
    ├── UnresolvableHost  (retryable: DNS gave no answer, which may be passing)
    └── InvalidSecret     (configuration: not a ``whsec_<base64>`` secret)
"""

from __future__ import annotations

from celeriac.errors import CeleriacError, InvalidRequest


class WebhookError(CeleriacError):
    code = "webhook_error"


class UrlRefused(WebhookError, InvalidRequest):
    """The URL, or an address its host resolves to, may not be called."""

    code = "webhook_url_refused"


class UnresolvableHost(WebhookError):
    code = "webhook_unresolvable_host"


class InvalidSecret(WebhookError):
    code = "webhook_invalid_secret"
