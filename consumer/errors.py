"""The one error tree of the service, grouped by what happens next.

    ConsumerError
    ├── ConfigError            start-up refuses to run; the message names the setting
    ├── RecordError            this Kafka record cannot become an Order: dead-letter the record
    │   ├── UndecodableError       bytes are not Avro of a known schema (incl. unknown schema id)
    │   └── InvalidOrderError      valid Avro, but the order breaks a domain rule
    ├── DeliveryError          raised by a vendor client for one request
    │   ├── TransientError         retry with backoff (connect, timeout, 408, 425, 429, 5xx)
    │   ├── FailedRequestError     the request failed for its orders, maybe not for good (Nudgify
    │   │                          409 conflict, 402 "request failed"): a bounded number of
    │   │                          retries, then treated as a RejectedError of those orders
    │   ├── RejectedError          the vendor refused (some of) the orders: dead-letter those for
    │   │                          that destination; `culprits` names them when the vendor does
    │   └── PauseError             pause the destination, probe slowly, never dead-letter
    │       ├── CredentialsError       401/403/402-plan: the vendor refuses the credentials/account
    │       └── MisconfiguredError     3xx, 404/405, unknown statuses: URL or setting is wrong
    ├── RegistryError          the Schema Registry gave no schema (not the record's fault): the
    │   │                      record waits, never dead-lettered; the registry client retries
    │   ├── RegistryUnavailableError   network, timeout, 5xx, a garbled answer: backoff
    │   └── RegistryRefusedError       401/403, TLS verification, redirect, wrong URL: logged as
    │                                  an error, retried slowly, `health` paused with the reason
    ├── DeadLetterError        the dead-letter topic did not acknowledge: retry, never commit past
    └── LedgerError            the ledger could not be read or written: retry, never send blind

Anything else raised while handling a record is a bug: retried a bounded number of times, then
the record is dead-lettered for that destination with class `internal_error` (never stuck).

Third-party exceptions are wrapped where they enter (`raise ... from exc`).
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Root of every error this service raises on purpose."""


class ConfigError(ConsumerError):
    """The settings are missing, malformed or unsafe."""


class RecordError(ConsumerError):
    """A Kafka record that cannot become an Order; it is dead-lettered, never retried."""

    error_class = "record"


class UndecodableError(RecordError):
    error_class = "undecodable"


class InvalidOrderError(RecordError):
    error_class = "invalid_order"


class DeliveryError(ConsumerError):
    """One vendor request failed; the subclass says what to do next."""

    error_class = "delivery"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class TransientError(DeliveryError):
    error_class = "transient"

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class RejectedError(DeliveryError):
    """Permanent rejection. `culprits` are positions in the request's order list, when known.

    Empty culprits means the vendor did not say which order was at fault: the caller bisects.
    """

    error_class = "rejected"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        culprits: dict[int, str] | None = None,
        error_class: str | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.culprits: dict[int, str] = culprits or {}
        if error_class is not None:
            self.error_class = error_class  # e.g. "conflict" once a FailedRequestError gave up


class FailedRequestError(DeliveryError):
    """The vendor failed the request for its orders without blaming the credentials, in a way
    that may or may not last (Nudgify 409 "conflicts with another request", 402 "the parameters
    were valid but the request failed"). Retried a bounded number of times, then the orders are
    isolated and dead-lettered with `error_class`: never an endless loop, never a pause."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_class: str = "request_failed",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.error_class = error_class
        self.retry_after = retry_after


class PauseError(DeliveryError):
    """Nothing sent to this vendor can succeed until someone fixes something outside the order:
    pause the destination (offsets held), probe slowly, never dead-letter."""

    error_class = "paused"


class CredentialsError(PauseError):
    error_class = "credentials"


class MisconfiguredError(PauseError):
    """A redirect, a missing endpoint or a status the vendor does not document: the base URL,
    host or a setting is wrong. Redirects are never followed (they would carry credentials)."""

    error_class = "misconfigured"


class RegistryError(ConsumerError):
    """The Schema Registry did not answer with a schema; retried inside the registry client."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryUnavailableError(RegistryError):
    """Network, timeout, 5xx or a garbled 200: it may pass by itself."""


class RegistryRefusedError(RegistryError):
    """The registry refuses us (401/403) or we refuse it (TLS verification), or the URL is wrong:
    only someone fixing a setting helps, so an operator must hear of it."""


class DeadLetterError(ConsumerError):
    """The dead-letter topic did not acknowledge a write."""


class LedgerError(ConsumerError):
    """The ledger could not be read or written."""
