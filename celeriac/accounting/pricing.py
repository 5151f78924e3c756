"""Cost of a call from the provider's reported usage, in integer nano-dollars.

USD per million tokens equals micro-dollars per token, so a price with up to three
decimals is a whole number of nano-dollars per token: sums stay exact.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from celeriac.catalog import ModelSpec, Price
from celeriac.errors import CeleriacError
from celeriac.gateway.providers.base import Usage

NANOS_PER_USD = 1_000_000_000


class PriceUnknown(CeleriacError):
    code = "price_unknown"


def price_of(model: ModelSpec) -> Price:
    """Fail closed: a model without a price is never called (and never free)."""
    if model.price is None:
        raise PriceUnknown(f"model {model.id!r} has no price in prices.toml", field="model")
    return model.price


def _nanos_per_token(usd_per_mtok: float) -> Decimal:
    return Decimal(str(usd_per_mtok)) * 1000


def cost_nanos(price: Price, usage: Usage) -> int:
    total = (
        _nanos_per_token(price.input) * usage.input_tokens
        + _nanos_per_token(price.output) * usage.output_tokens
        + _nanos_per_token(price.cache_write) * usage.cache_write_tokens
        + _nanos_per_token(price.cache_read) * usage.cache_read_tokens
    )
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def nanos_to_usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


def usd_to_nanos(usd: float) -> int:
    return int((Decimal(str(usd)) * NANOS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def worst_case_nanos(price: Price, input_tokens: int, max_tokens: int) -> int:
    """What a call can cost at most: its input, and every output token it may produce."""
    return cost_nanos(price, Usage(input_tokens=input_tokens, output_tokens=max_tokens))
