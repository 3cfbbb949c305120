"""Settings: one frozen object, loaded from the environment and secret files, checked at start.

Every variable is prefixed `CONSUMER_`. A secret `CONSUMER_X` may instead be given as
`CONSUMER_X_FILE=/path` (Kubernetes/Docker secrets). librdkafka settings pass through as
`CONSUMER_KAFKA__<NAME>` where `_` stands for `.` (`CONSUMER_KAFKA__SASL_MECHANISMS=PLAIN`).
An unknown `CONSUMER_` variable is an error: a typo must not silently fall back to a default.
Rules beyond a value's type (URL safety, vendor codes, librdkafka's verdict) are in
`config_rules`; every problem of a start is reported at once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from consumer import config_rules as rules
from consumer.errors import ConfigError

PREFIX = "CONSUMER_"
KAFKA_PASSTHROUGH = "CONSUMER_KAFKA__"
PACKAGED_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "order_completed.avsc"

# librdkafka settings the service owns: overriding them would break the commit guarantee.
RESERVED_KAFKA_SETTINGS = frozenset(
    {
        "enable.auto.offset.store",
        "enable.auto.commit",
        "group.id",
        "bootstrap.servers",
        "partition.assignment.strategy",
        # The classic protocol's cooperative-sticky assignment is what the runner relies on.
        "group.protocol",
        "on_commit",
        # The dead-letter producer is idempotent, not transactional: a transactional id would
        # make every dead-letter write fail.
        "transactional.id",
    }
)
MIB = 1024 * 1024


class Secret:
    """A credential: usable with `reveal()`, never shown by `repr`/`str`/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def new_instance_id() -> str:
    """The owner of this process's ledger claims: host, pid and a random part. A container
    restarted in its pod keeps its host name and is pid 1 again; without the random part it
    would take its predecessor's claims for its own and not count them as the open window."""
    return f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class NibbleSettings:
    enabled: bool
    base_url: str
    api_key: Secret | None
    api_secret: Secret | None
    report_all_sales: bool
    batch_size: int


@dataclass(frozen=True, slots=True)
class NudgifySettings:
    enabled: bool
    base_url: str
    api_key: Secret | None
    site_key: str | None
    batch_size: int


@dataclass(frozen=True, slots=True)
class CustobarSettings:
    enabled: bool
    base_url: str | None
    auth: str  # token | bearer | basic
    token: Secret | None
    username: str | None
    password: Secret | None
    default_currency: str
    company: str
    batch_size: int


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    http_timeout_s: float
    concurrent_requests: int
    linger_ms: int
    retry_initial_s: float
    retry_max_s: float
    credentials_retry_s: float
    lease_s: float


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How the Schema Registry client proves who it is and whom it trusts (Confluent's client
    names: `basic.auth.user.info`, `bearer.auth.token`, `ssl.ca.location`, ...). Checked at
    start: files exist, a certificate comes with its key, one kind of credentials at most, and
    credentials never travel over plain http except on loopback."""

    basic_auth_user_info: Secret | None = None  # "user:secret"; Confluent Cloud: "key:secret"
    bearer_token: Secret | None = None
    ca_location: Path | None = None  # trust only this CA bundle (default: the public roots)
    certificate_location: Path | None = None  # client certificate (mutual TLS)
    key_location: Path | None = None

    @property
    def credentials(self) -> str | None:
        if self.basic_auth_user_info is not None:
            return "basic"
        return "bearer" if self.bearer_token is not None else None

    def secrets(self) -> list[str]:
        found = [s.reveal() for s in (self.basic_auth_user_info, self.bearer_token) if s]
        if self.basic_auth_user_info is not None:  # the password alone may show up too
            found.append(self.basic_auth_user_info.reveal().partition(":")[2])
        return [s for s in found if s]


def _registry_settings(r: _Reader, url: str | None) -> RegistrySettings:
    name = "SCHEMA_REGISTRY_"
    files: dict[str, Path | None] = {}
    for label in ("CA_LOCATION", "CERTIFICATE_LOCATION", "KEY_LOCATION"):
        value = r.optional(name + label)
        files[label] = Path(value) if value else None
        if value and not Path(value).is_file():
            r.fail(f"{PREFIX}{name}{label}: no file at {value}")
    settings = RegistrySettings(
        basic_auth_user_info=r.secret(name + "BASIC_AUTH_USER_INFO"),
        bearer_token=r.secret(name + "BEARER_TOKEN"),
        ca_location=files["CA_LOCATION"],
        certificate_location=files["CERTIFICATE_LOCATION"],
        key_location=files["KEY_LOCATION"],
    )
    info = settings.basic_auth_user_info
    user, _, password = info.reveal().partition(":") if info else ("", "", "")
    if info is not None and not (user and password):
        r.fail(f"{PREFIX}{name}BASIC_AUTH_USER_INFO must be <user>:<secret>")
    if info is not None and settings.bearer_token is not None:
        r.fail(f"set {PREFIX}{name}BASIC_AUTH_USER_INFO or {PREFIX}{name}BEARER_TOKEN, not both")
    if (settings.certificate_location is None) != (settings.key_location is None):
        r.fail(f"{PREFIX}{name}CERTIFICATE_LOCATION and {PREFIX}{name}KEY_LOCATION go together")
    if settings != RegistrySettings() and url is None:
        r.fail(f"{PREFIX}{name}* settings are set but {PREFIX}SCHEMA_REGISTRY_URL is not")
    # Plain http is refused for the URL itself unless on loopback (`_Reader.url`), so
    # credentials never travel in clear text.
    return settings


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Bounds and brakes of the flow; each field mirrors its variable (`CONSUMER_<FIELD>`)."""

    max_in_flight_bytes: int = 16 * MIB
    """Record bytes in flight per destination; at the bound that destination takes no more."""
    dlq_brake_ratio: float = 0.5
    """Share of a destination's recent orders being dead-lettered above which it pauses."""
    dlq_brake_window: int = 100
    """How many of a destination's most recent orders the ratio is taken over."""
    dlq_brake_min: int = 20
    """Dead letters within the window before the brake can trip at all."""
    internal_error_retries: int = 5
    """Retries of an unexpected error on a record before it is dead-lettered (internal_error)."""
    stalled_record_s: float = 300.0
    """A partition held back by one record longer than this is reported stalled."""


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str
    topic: str
    group_id: str
    dead_letter_topic: str
    kafka: Mapping[str, str]
    schema_registry_url: str | None
    registry: RegistrySettings
    avro_format: str  # confluent | schemaless
    writer_schema: Path
    reader_schema: Path
    ledger_url: str
    idempotency_secret: Secret
    nibble: NibbleSettings
    nudgify: NudgifySettings
    custobar: CustobarSettings
    delivery: DeliverySettings
    max_in_flight: int
    commit_interval_ms: int
    shutdown_grace_s: float
    health_port: int | None
    log_format: str
    log_level: str
    resend: bool = False
    limits: LimitSettings = field(default_factory=LimitSettings)
    instance_id: str = field(default_factory=new_instance_id)

    def destination_group(self, destination: str) -> str:
        """The consumer group of one destination: each commits its own offsets, so one vendor's
        outage never holds back another's (`order-consumer` → `order-consumer-nibble`)."""
        return f"{self.group_id}-{destination}"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so the log redactor can scrub them wherever they appear."""
        found = [
            s.reveal()
            for s in (
                self.idempotency_secret,
                self.nibble.api_key,
                self.nibble.api_secret,
                self.nudgify.api_key,
                self.custobar.token,
                self.custobar.password,
            )
            if s is not None and s.reveal()
        ]
        found += self.registry.secrets()
        if self.nudgify.site_key:  # not a credential, but it names the customer's site
            found.append(self.nudgify.site_key)
        found += [v for k, v in self.kafka.items() if _looks_secret(k) and v]
        return tuple(found)


def _looks_secret(name: str) -> bool:
    """A librdkafka setting whose value must never be shown: passwords, keys, OAUTHBEARER and
    JAAS configurations (which embed client secrets), PEM material."""
    words = ("password", "secret", "token", "key", "oauthbearer.config", "jaas", "pem")
    return any(word in name for word in words)


class KafkaSettings(dict[str, str]):
    """The librdkafka passthrough; its `repr` (in the settings' repr, a traceback, a debugger)
    hides every value that looks secret."""

    def __repr__(self) -> str:
        shown = {k: "**********" if _looks_secret(k) else v for k, v in self.items()}
        return f"KafkaSettings({shown!r})"


class _Reader:
    """Reads CONSUMER_ variables, remembering which were used so leftovers can be reported."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.used: set[str] = set()
        self.problems: list[str] = []

    def fail(self, message: str) -> None:
        """Note a problem and carry on, so one start reports every problem at once."""
        self.problems.append(message)

    def raw(self, name: str) -> str | None:
        key = PREFIX + name
        self.used.add(key)
        value = self.env.get(key)
        return value.strip() if value is not None and value.strip() != "" else None

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def optional(self, name: str) -> str | None:
        return self.raw(name)

    def secret(self, name: str) -> Secret | None:
        direct = self.raw(name)
        file_key = name + "_FILE"
        path = self.raw(file_key)
        if direct and path:
            self.fail(f"set either {PREFIX}{name} or {PREFIX}{file_key}, not both")
        if path:
            text = self.read_file(PREFIX + file_key, path)
            return None if text is None else Secret(text)
        return Secret(direct) if direct else None

    def read_file(self, key: str, path: str) -> str | None:
        """A secret file's text, or None with the problem noted (never its content)."""
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.fail(f"{key}: cannot read {path}: {exc.strerror}")
        except UnicodeDecodeError:
            self.fail(f"{key}: {path} is not UTF-8 text")
        return None

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self.fail(f"{PREFIX}{name} must be true or false, got {value!r}")
        return default

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{PREFIX}{name} must be a number, got {value!r}")
            return default
        if not minimum <= number <= maximum:
            self.fail(f"{PREFIX}{name} must be between {minimum} and {maximum}")
            return default
        return number

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        number = self.number(name, default, minimum=minimum, maximum=maximum)
        if number != int(number):
            self.fail(f"{PREFIX}{name} must be a whole number")
            return default
        return int(number)

    def url(self, name: str, default: str | None) -> str | None:
        """An http(s) URL without a trailing slash; a refused one is noted and left out (so a
        password in it never reaches the settings' repr)."""
        value = self.raw(name) or default
        if value is None:
            return None
        problem = rules.http_url_problem(name, value)
        if problem is not None:
            self.fail(problem)
            return ""
        return value.rstrip("/")

    def check(self, problem: str | None) -> None:
        if problem is not None:
            self.fail(problem)


def _kafka_passthrough(env: Mapping[str, str], r: _Reader) -> KafkaSettings:
    settings = KafkaSettings()
    for key, value in env.items():
        if not key.startswith(KAFKA_PASSTHROUGH):
            continue
        name = key[len(KAFKA_PASSTHROUGH) :]
        if name.endswith("_FILE"):  # e.g. CONSUMER_KAFKA__SASL_PASSWORD_FILE
            name = name.removesuffix("_FILE")
            text = r.read_file(key, value)
            if text is None:
                continue
            value = text
        name = name.lower().replace("_", ".")
        if name in RESERVED_KAFKA_SETTINGS:
            r.fail(f"{key}: {name} is managed by the service and cannot be overridden")
            continue
        settings[name] = value
    return settings


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate the settings; raise ConfigError naming every problem found first."""
    env = os.environ if env is None else env
    r = _Reader(env)
    bootstrap = r.optional("BOOTSTRAP_SERVERS") or env.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        r.fail(f"{PREFIX}BOOTSTRAP_SERVERS is required (host:port[,host:port])")
    registry = r.url("SCHEMA_REGISTRY_URL", None)  # "" when given but refused
    avro_format = r.text("AVRO_FORMAT", "schemaless" if registry is None else "confluent")
    if avro_format not in ("confluent", "schemaless"):
        r.fail(f"{PREFIX}AVRO_FORMAT must be confluent or schemaless")
    if avro_format == "confluent" and registry is None:
        r.fail(f"{PREFIX}AVRO_FORMAT=confluent needs {PREFIX}SCHEMA_REGISTRY_URL")
    writer_schema = Path(r.text("WRITER_SCHEMA", str(PACKAGED_SCHEMA)))
    reader_schema = Path(r.text("READER_SCHEMA", str(PACKAGED_SCHEMA)))
    for label, path in (("WRITER_SCHEMA", writer_schema), ("READER_SCHEMA", reader_schema)):
        r.check(rules.schema_problem(label, path))

    idempotency_secret = r.secret("IDEMPOTENCY_SECRET")
    if idempotency_secret is None or len(idempotency_secret.reveal()) < 16:
        r.fail(
            f"{PREFIX}IDEMPOTENCY_SECRET is required (at least 16 characters): it keys the "
            "Idempotency-Key header sent to vendors"
        )

    nibble = NibbleSettings(
        enabled=r.flag("NIBBLE_ENABLED", True),
        base_url=r.url("NIBBLE_BASE_URL", "https://api.nibble.website") or "",
        api_key=r.secret("NIBBLE_API_KEY"),
        api_secret=r.secret("NIBBLE_API_SECRET"),
        report_all_sales=r.flag("NIBBLE_REPORT_ALL_SALES", True),
        batch_size=r.integer("NIBBLE_BATCH_SIZE", 50, minimum=1, maximum=50),
    )
    nudgify = NudgifySettings(
        enabled=r.flag("NUDGIFY_ENABLED", True),
        base_url=r.url("NUDGIFY_BASE_URL", "https://app.nudgify.com") or "",
        api_key=r.secret("NUDGIFY_API_KEY"),
        site_key=_site_key(r),
        batch_size=r.integer("NUDGIFY_BATCH_SIZE", 100, minimum=1, maximum=1000),
    )
    custobar = CustobarSettings(
        enabled=r.flag("CUSTOBAR_ENABLED", True),
        base_url=r.url("CUSTOBAR_BASE_URL", None),
        auth=r.text("CUSTOBAR_AUTH", "token").lower(),
        token=r.secret("CUSTOBAR_TOKEN"),
        username=r.optional("CUSTOBAR_USERNAME"),
        password=r.secret("CUSTOBAR_PASSWORD"),
        default_currency=_currency(r),
        company=_company(r),
        batch_size=r.integer("CUSTOBAR_BATCH_SIZE", 200, minimum=1, maximum=2000),
    )
    _check_vendors(r, nibble, nudgify, custobar)

    delivery = DeliverySettings(
        http_timeout_s=r.number("HTTP_TIMEOUT_S", 15.0, minimum=0.1, maximum=300),
        concurrent_requests=r.integer("CONCURRENT_REQUESTS", 4, minimum=1, maximum=64),
        linger_ms=r.integer("BATCH_LINGER_MS", 50, minimum=0, maximum=60_000),
        retry_initial_s=r.number("RETRY_INITIAL_S", 0.5, minimum=0.001, maximum=60),
        retry_max_s=r.number("RETRY_MAX_S", 60.0, minimum=0.01, maximum=3600),
        credentials_retry_s=r.number("CREDENTIALS_RETRY_S", 60.0, minimum=0.01, maximum=3600),
        lease_s=r.number("CLAIM_LEASE_S", 120.0, minimum=1, maximum=3600),
    )
    health_port = r.integer("HEALTH_PORT", 0, minimum=0, maximum=65535)
    settings = Settings(
        bootstrap_servers=bootstrap or "",
        topic=r.text("TOPIC", "order-completed"),
        group_id=r.text("GROUP_ID", "order-consumer"),
        dead_letter_topic=r.text("DEAD_LETTER_TOPIC", "order-completed.dlq"),
        kafka=_kafka_passthrough(env, r),
        schema_registry_url=registry or None,
        registry=_registry_settings(r, registry or None),
        avro_format=avro_format,
        writer_schema=writer_schema,
        reader_schema=reader_schema,
        ledger_url=r.text("LEDGER_URL", "sqlite:///order-consumer-ledger.sqlite3"),
        idempotency_secret=idempotency_secret or Secret(""),
        nibble=nibble,
        nudgify=nudgify,
        custobar=custobar,
        delivery=delivery,
        max_in_flight=r.integer("MAX_IN_FLIGHT", 1000, minimum=1, maximum=20_000),
        commit_interval_ms=r.integer("COMMIT_INTERVAL_MS", 1000, minimum=10, maximum=60_000),
        shutdown_grace_s=r.number("SHUTDOWN_GRACE_S", 30.0, minimum=0.1, maximum=3600),
        health_port=health_port or None,
        log_format=r.text("LOG_FORMAT", "auto").lower(),
        log_level=r.text("LOG_LEVEL", "info").lower(),
        resend=r.flag("RESEND", False),
        limits=_limits(r),
    )
    _check_kafka_tls(r, settings.kafka)
    if settings.log_format not in ("auto", "json", "console"):
        r.fail(f"{PREFIX}LOG_FORMAT must be auto, json or console")
    r.check(rules.log_level_problem(settings.log_level))
    r.check(rules.ledger_url_problem(settings.ledger_url))
    r.check(rules.topic_problem("TOPIC", settings.topic))
    r.check(rules.topic_problem("DEAD_LETTER_TOPIC", settings.dead_letter_topic))
    _check_timing(r, settings.delivery)
    if settings.dead_letter_topic == settings.topic:
        r.fail(
            f"{PREFIX}DEAD_LETTER_TOPIC must differ from {PREFIX}TOPIC: dead letters would be "
            "consumed again"
        )
    for problem in rules.librdkafka_problems(settings.kafka, settings.secrets()):
        r.fail(problem)
    unknown = sorted(
        k
        for k in env
        if k.startswith(PREFIX) and not k.startswith(KAFKA_PASSTHROUGH) and k not in r.used
    )
    if unknown:
        r.fail(f"unknown setting(s): {', '.join(unknown)} (see README: Configuration)")
    if r.problems:
        raise ConfigError("\n  ".join(r.problems))
    return settings


def _check_timing(r: _Reader, d: DeliverySettings) -> None:
    if d.retry_max_s < d.retry_initial_s:
        r.fail(f"{PREFIX}RETRY_MAX_S must not be less than {PREFIX}RETRY_INITIAL_S")
    if d.lease_s < 2 * d.http_timeout_s:
        # A claim must outlive a request that is still being answered: shorter, and another
        # member takes over an order whose request may yet succeed (sent twice).
        r.fail(
            f"{PREFIX}CLAIM_LEASE_S ({d.lease_s:g} s) must be at least twice "
            f"{PREFIX}HTTP_TIMEOUT_S ({d.http_timeout_s:g} s)"
        )


def _site_key(r: _Reader) -> str | None:
    site_key = r.optional("NUDGIFY_SITE_KEY")
    if site_key is not None:
        r.check(rules.site_key_problem(site_key))
    return site_key


def _currency(r: _Reader) -> str:
    currency = r.text("CUSTOBAR_DEFAULT_CURRENCY", "EUR").upper()
    r.check(rules.currency_problem(currency))
    return currency


def _company(r: _Reader) -> str:
    company = r.text("CUSTOBAR_COMPANY", "COMPANY")
    r.check(rules.company_problem(company))
    return company.upper()


def _limits(r: _Reader) -> LimitSettings:
    d = LimitSettings()
    ratio = r.number("DLQ_BRAKE_RATIO", d.dlq_brake_ratio, minimum=0, maximum=1)
    if ratio == 0:
        r.fail(f"{PREFIX}DLQ_BRAKE_RATIO must be above 0 (and at most 1)")
    limits = LimitSettings(
        max_in_flight_bytes=r.integer("MAX_IN_FLIGHT_BYTES", d.max_in_flight_bytes,
                                      minimum=MIB, maximum=1024 * MIB),
        dlq_brake_ratio=ratio or d.dlq_brake_ratio,
        dlq_brake_window=r.integer("DLQ_BRAKE_WINDOW", d.dlq_brake_window,
                                   minimum=10, maximum=100_000),
        dlq_brake_min=r.integer("DLQ_BRAKE_MIN", d.dlq_brake_min, minimum=1, maximum=100_000),
        internal_error_retries=r.integer("INTERNAL_ERROR_RETRIES", d.internal_error_retries,
                                         minimum=0, maximum=100),
        stalled_record_s=r.number("STALLED_RECORD_S", d.stalled_record_s,
                                  minimum=1, maximum=86_400),
    )  # fmt: skip
    if limits.dlq_brake_min > limits.dlq_brake_window:
        r.fail(
            f"{PREFIX}DLQ_BRAKE_MIN ({limits.dlq_brake_min}) must not exceed "
            f"{PREFIX}DLQ_BRAKE_WINDOW ({limits.dlq_brake_window}): the brake could never trip"
        )
    return limits


def _check_vendors(
    r: _Reader, nibble: NibbleSettings, nudgify: NudgifySettings, custobar: CustobarSettings
) -> None:
    missing: list[str] = []
    if nibble.enabled:
        missing += [
            f"NIBBLE_{n}"
            for n, v in (("API_KEY", nibble.api_key), ("API_SECRET", nibble.api_secret))
            if v is None
        ]
    if nudgify.enabled:
        missing += [
            f"NUDGIFY_{n}"
            for n, v in (("API_KEY", nudgify.api_key), ("SITE_KEY", nudgify.site_key))
            if v is None
        ]
    if custobar.enabled:
        if custobar.base_url is None:
            missing.append("CUSTOBAR_BASE_URL")
        if custobar.auth not in ("token", "bearer", "basic"):
            r.fail(f"{PREFIX}CUSTOBAR_AUTH must be token, bearer or basic")
        if custobar.auth == "basic":
            if custobar.username is None:
                missing.append("CUSTOBAR_USERNAME")
            if custobar.password is None:
                missing.append("CUSTOBAR_PASSWORD")
        elif custobar.token is None:
            missing.append("CUSTOBAR_TOKEN")
    if missing:
        names = ", ".join(PREFIX + m for m in missing)
        r.fail(
            f"missing credentials: {names} (or the matching _FILE variable; "
            "or disable the vendor with CONSUMER_<VENDOR>_ENABLED=false)"
        )
    if not (nibble.enabled or nudgify.enabled or custobar.enabled):
        r.fail("every destination is disabled: nothing to deliver")


def _check_kafka_tls(r: _Reader, kafka: Mapping[str, str]) -> None:
    """Turning off broker certificate checks takes a second, explicit setting: a copied
    librdkafka snippet must not do it silently."""
    verification_off = kafka.get("enable.ssl.certificate.verification", "true").lower() in (
        "false", "0",
    ) or kafka.get("ssl.endpoint.identification.algorithm", "https").lower() == "none"  # fmt: skip
    if verification_off and not r.flag("INSECURE_KAFKA_TLS", False):
        r.fail(
            "Kafka TLS certificate or host name verification is turned off by a KAFKA__ "
            f"setting; set {PREFIX}INSECURE_KAFKA_TLS=true as well if that is really meant"
        )
