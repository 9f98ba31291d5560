"""One root error with a stable machine-readable code per subclass, and one code -> HTTP status table."""
from __future__ import annotations


class PaycellError(Exception):
    code = "internal"
    title = "Internal error"

    def __init__(self, detail: str = "", *, errors: list[dict[str, str]] | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []
        self.retry_after_s = retry_after_s


class ValidationError(PaycellError):
    code = "invalid_request"
    title = "Invalid request"

    def __init__(self, detail: str = "", *, field: str | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
        if field is not None and errors is None:
            errors = [{"field": field, "message": detail}]
        super().__init__(detail, errors=errors)


class Unauthenticated(PaycellError):
    code = "unauthenticated"
    title = "Authentication failed"


class NotFound(PaycellError):
    code = "not_found"
    title = "Not found"


class IdempotencyConflict(PaycellError):
    code = "idempotency_conflict"
    title = "Idempotency key reused with a different request"


class PayloadTooLarge(PaycellError):
    code = "payload_too_large"
    title = "Request body too large"


class UnsupportedMediaType(PaycellError):
    code = "unsupported_media_type"
    title = "Unsupported media type"


class MethodNotAllowed(PaycellError):
    code = "method_not_allowed"
    title = "Method not allowed"


class RateLimited(PaycellError):
    code = "rate_limited"
    title = "Too many requests"


class RiskRejected(PaycellError):
    code = "risk_rejected"
    title = "Rejected by risk control"


class NoChannel(PaycellError):
    code = "no_channel"
    title = "No enabled channel can take this payment"


class OrderNotRefundable(PaycellError):
    code = "order_not_refundable"
    title = "Only a SUCCEEDED order can be refunded"


class RefundExceedsPaid(PaycellError):
    code = "refund_exceeds_paid"
    title = "The refunds would exceed the paid amount"


class RefundWindowClosed(PaycellError):
    code = "refund_window_closed"
    title = "The channel's refund window for this payment has closed"


class TooManyRefunds(PaycellError):
    code = "too_many_refunds"
    title = "The payment has as many refunds as the channel or paycell allows"


class Unavailable(PaycellError):
    code = "unavailable"
    title = "Service temporarily unavailable"


class Overloaded(Unavailable):
    code = "overloaded"
    title = "A bound was reached; retry later"


class ConfigError(PaycellError):
    code = "config_error"
    title = "Invalid configuration"


HTTP_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "unauthenticated": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "idempotency_conflict": 409,
    "order_not_refundable": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "risk_rejected": 422,
    "no_channel": 422,
    "refund_exceeds_paid": 422,
    "refund_window_closed": 422,
    "too_many_refunds": 422,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
    "overloaded": 503,
    "config_error": 500,
}


def http_status_for(error: PaycellError) -> int:
    return HTTP_STATUS[error.code]


def _all_subclasses(cls: type[PaycellError]) -> list[type[PaycellError]]:
    out: list[type[PaycellError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_for_code(code: str, detail: str = "", retry_after_s: int | None = None) -> PaycellError:
    """Rebuild a PaycellError from its stable code (errors cross process boundaries as data)."""
    classes: list[type[PaycellError]] = [PaycellError, *_all_subclasses(PaycellError)]
    for cls in classes:
        if cls.code == code:
            err: PaycellError = cls.__new__(cls)
            PaycellError.__init__(err, detail, retry_after_s=retry_after_s)
            return err
    return PaycellError(detail, retry_after_s=retry_after_s)
