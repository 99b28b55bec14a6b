"""The policy file as a frozen, typed model (pydantic 2). Unknown keys are errors.

Cross-field rules that need the whole file (a rule naming an unknown store, duplicate ids,
``keep_for`` longer than ``dispose_after``) live in :mod:`retentiond.policy.checks` so that every
problem is reported at once, each with its path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretBytes,
    Strict,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from retentiond.policy.keys import (
    SecretKey,
    SecretRef,
    SecretString,
    SigningKey,
    check_appendable,
    load_signing_key,
)
from retentiond.policy.sqltext import check_identifier, check_where
from retentiond.policy.urls import check_url
from retentiond.timeutil import Duration, parse_duration

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The same language as timeutil.parse_duration (tests/unit/test_policy.py checks they agree).
DURATION_PATTERN = (r"^([0-9]+(h|d|w|mo|y)|P(?!$)([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?"
                    r"(T(?=[0-9])([0-9]+H)?([0-9]+M)?([0-9]+S)?)?)$")

DurationField = Annotated[
    Duration,
    BeforeValidator(lambda v: v if isinstance(v, Duration) else parse_duration(v)),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                    "description": "3y, 18mo, 30d, 2w, 12h or ISO 8601 (P3Y, PT12H)"}),
]
Identifier = Annotated[str, AfterValidator(check_identifier)]
TableName = Annotated[str, AfterValidator(lambda v: check_identifier(v, qualified=True))]
Action = Literal["delete", "anonymize", "isolate"]
# Strict scalars: ``true`` is not 1 and ``'1000'`` is not 1000 in a policy file.
WholeNumber = Annotated[int, Strict()]
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]


def _exact_int(value: Any) -> Any:
    """Python has ``1.0 == True == 1``; a policy's ``version: 1.0`` or ``true`` is still wrong."""
    if type(value) is not int:
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        raise ValueError(f"must be the whole number 1, got {shown}")
    return value


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    """A validator saying in words what a name must look like, instead of echoing a regex."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value
    return check


def _name(pattern: str, what: str) -> Any:
    return (AfterValidator(_matching(pattern, what)),
            WithJsonSchema({"type": "string", "pattern": f"^{pattern}$"}))


RULE_ID_PATTERN = r"[a-z0-9-]{1,64}"
RuleId = Annotated[str, *_name(RULE_ID_PATTERN, "a valid rule id: use 1-64 lowercase letters, "
                               "digits and '-', like closed-accounts")]
StoreName = Annotated[str, *_name(r"[A-Za-z0-9_-]{1,64}", "a valid store name: use letters, "
                                  "digits, '_' and '-'")]
AdapterName = Annotated[str, *_name(r"[a-z][a-z0-9_-]*", "a valid adapter name: use a "
                                    "registered adapter such as sql")]
SubjectKind = Annotated[str, *_name(r"[a-z0-9_-]+", "a valid subject kind: use lowercase "
                                    "letters, digits, '_' and '-', like user")]
ProviderName = Annotated[str, *_name(r"[a-z_][a-z0-9_]*", "a Faker provider name like email")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _key(value: Any) -> Any:
    """``key: id`` or ``key: [a, b]``; a list of one column is that column (the same record
    references as ``key: a``)."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("a key lists at least one column")
        if not all(isinstance(v, str) for v in value):
            raise ValueError("a key lists column names")
        if len(set(value)) != len(value):
            raise ValueError("a key names each column once")
        names = tuple(check_identifier(v) for v in value)
        return names[0] if len(names) == 1 else names
    return check_identifier(value) if isinstance(value, str) else value


KeyField = Annotated[
    str | tuple[str, ...],
    BeforeValidator(_key),
    WithJsonSchema({"anyOf": [
        {"type": "string", "description": "the primary key (or a unique) column"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True,
         "description": "the columns of a composite primary key or unique constraint"}]}),
]


# --- match conditions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One ``match`` condition: ``eq``, ``in``, ``is_null``, ``older_than`` or ``newer_than``."""

    op: str
    value: Any


_CONDITION_OPS = {"in", "is_null", "older_than", "newer_than"}


def _condition(v: Any) -> Condition:
    if isinstance(v, Condition):
        return v
    if isinstance(v, Mapping):
        if len(v) != 1 or next(iter(v)) not in _CONDITION_OPS:
            raise ValueError(f"unknown condition {dict(v)!r}; use a value or exactly one of "
                             "{in: [...]}, {is_null: true|false}, {older_than: DURATION}, "
                             "{newer_than: DURATION}")
        op, arg = next(iter(v.items()))
        if op == "in":
            if not isinstance(arg, list) or not arg or not all(_is_scalar(x) for x in arg):
                raise ValueError("in takes a non-empty list of values")
            return Condition("in", tuple(arg))
        if op == "is_null":
            if not isinstance(arg, bool):
                raise ValueError("is_null takes true or false")
            return Condition("is_null", arg)
        return Condition(op, parse_duration(arg))
    if not _is_scalar(v) or v is None:
        raise ValueError("a condition is a scalar value; use {is_null: true} for NULL")
    return Condition("eq", v)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


MatchCondition = Annotated[
    Condition,
    BeforeValidator(_condition),
    WithJsonSchema({"anyOf": [
        {"type": ["string", "number", "boolean"]},
        {"type": "object", "additionalProperties": False, "minProperties": 1,
         "maxProperties": 1, "properties": {
             "in": {"type": "array", "minItems": 1},
             "is_null": {"type": "boolean"},
             "older_than": {"type": "string", "pattern": DURATION_PATTERN},
             "newer_than": {"type": "string", "pattern": DURATION_PATTERN}}}]}),
]


# --- anonymisation strategies ---------------------------------------------------------------


class NullStrategy(_Model):
    strategy: Literal["null"]


class DefaultStrategy(_Model):
    strategy: Literal["default"]


def _scalar(value: Any) -> Any:
    if not _is_scalar(value):
        raise ValueError("value must be a string, a number or true/false")
    return value


class ConstantStrategy(_Model):
    strategy: Literal["constant"]
    value: Annotated[str | int | float | bool, BeforeValidator(_scalar)]


class MaskStrategy(_Model):
    strategy: Literal["mask"]
    keep_first: WholeNumber = Field(0, ge=0)
    keep_last: WholeNumber = Field(0, ge=0)
    char: str = Field("*", min_length=1, max_length=1)
    format: Literal["email"] | None = None


class HmacStrategy(_Model):
    strategy: Literal["hmac"]
    length: WholeNumber | None = Field(None, ge=8, le=64)
    format: Literal["email"] | None = None
    domain: str = "anonymized.invalid"


class FakeStrategy(_Model):
    strategy: Literal["fake"]
    provider: ProviderName
    locale: str | None = None
    deterministic: Flag = False


class TruncateDateStrategy(_Model):
    strategy: Literal["truncate_date"]
    unit: Literal["year", "month", "day"]


class RoundStrategy(_Model):
    strategy: Literal["round"]
    step: Number = Field(gt=0)


Strategy = Annotated[
    NullStrategy | DefaultStrategy | ConstantStrategy | MaskStrategy | HmacStrategy
    | FakeStrategy | TruncateDateStrategy | RoundStrategy,
    Field(discriminator="strategy"),
]


STRATEGY_NAMES = ("null", "default", "constant", "mask", "hmac", "fake", "truncate_date", "round")


class AnonymizeOptions(_Model):
    marker: Identifier
    columns: dict[Identifier, Strategy] = Field(min_length=1)


class IsolateOptions(_Model):
    table: TableName | None = None  # sql: the isolation table (default <table>_isolated)
    dir: str | None = None  # files: the isolation directory, on the root's filesystem
    bucket: str | None = None  # s3: the isolation bucket (default: the store's own)
    prefix: str | None = None  # s3: the isolation prefix (default .retentiond-isolated/)
    for_: DurationField | None = Field(None, alias="for")


# --- stores and rules -----------------------------------------------------------------------


class Backups(_Model):
    retention: DurationField


class Store(_Model):
    adapter: AdapterName
    url: SecretString | None = None
    root: str | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    # s3: credentials given in the policy (each a string, {env}, {file} or {credential});
    # without them boto3's standard chain (environment, shared files, instance role).
    access_key_id: SecretString | None = None
    secret_access_key: SecretString | None = None
    session_token: SecretString | None = None
    backups: Backups | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _sql_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        """Only the sql adapter's URLs are SQLAlchemy URLs; others are the adapter's own."""
        return check_url(url) if url is not None and info.data.get("adapter") == "sql" else url


class Rule(_Model):
    id: RuleId
    description: str = ""
    source: str = ""
    store: str
    table: TableName | None = None
    # files and s3: a glob relative to the root (below the prefix), with named fields
    # {subject} and {clock:<strftime>} (retentiond/adapters/pathglob.py).
    path: str | None = None
    prefix: str | None = None  # s3: the key prefix the rule lists
    key: KeyField | None = None
    subject: Identifier | None = None
    subject_kind: SubjectKind = "user"
    clock: Identifier | None = None
    # What an integer clock counts (SPEC 10): retentiond never guesses seconds or milliseconds.
    clock_format: Literal["epoch_seconds", "epoch_millis"] | None = None
    match: dict[Identifier, MatchCondition] = Field(default_factory=dict)
    where: Annotated[str, AfterValidator(check_where)] | None = None
    keep_for: DurationField | None = None
    dispose_after: DurationField | None = None
    action: Action = "delete"
    anonymize: AnonymizeOptions | None = None
    isolate: IsolateOptions | None = None
    on_erasure: Literal["delete", "anonymize", "isolate", "keep"] | None = None
    legal_basis: str | None = None
    prune_empty_dirs: StrictBool = False  # files: remove directories a delete leaves empty
    subject_tag: str | None = None  # s3: the object tag holding the subject id
    versions: Literal["all", "current"] = "all"  # s3: what a disposal removes
    # sql on PostgreSQL, delete rules: dispose a wholly-due partition as a unit (README,
    # "partitions: drop"); "rows" sweeps every partition row by row.
    partitions: Literal["rows", "drop"] = "rows"

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The key's column names: one for ``key: id``, several for ``key: [a, b]``."""
        if self.key is None:
            return ()
        return (self.key,) if isinstance(self.key, str) else self.key

    @property
    def composite_key(self) -> bool:
        return len(self.key_columns) > 1

    @property
    def target(self) -> str:
        """What the rule scans: the table (sql), the path pattern (files), the prefix and
        path pattern (s3)."""
        return self.table or f"{self.prefix or ''}{self.path or ''}"

    @property
    def erasure_action(self) -> str:
        return self.on_erasure or self.action


class RequestOptions(_Model):
    erasure_due: DurationField = Field(default_factory=lambda: parse_duration("30d"))


class MetricsOptions(_Model):
    port: WholeNumber = Field(ge=1, le=65535)
    address: str = "127.0.0.1"


class CheckpointsFile(_Model):
    """``checkpoints: {file: PATH}``: every checkpoint is also appended there as one JSON line
    (for ``audit verify --checkpoint``); keep it where the state database's writers cannot
    rewrite it."""

    file: str = Field(min_length=1)

    @field_validator("file")
    @classmethod
    def _appendable(cls, v: str) -> str:
        check_appendable(Path(v))  # a run must not dispose, then fail to write its checkpoint
        return v


def _zone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}; use an IANA name like UTC or "
                         "Europe/Berlin") from None
    return v


class Policy(_Model):
    version: Annotated[Literal[1], BeforeValidator(_exact_int)]
    timezone: Annotated[str, AfterValidator(_zone)] = "UTC"
    state: Annotated[str, AfterValidator(check_url)] = "sqlite:////var/lib/retentiond/state.db"
    secret_key: SecretKey
    signing_key: SigningKey = None
    checkpoints: CheckpointsFile | None = None
    schedule: str = "0 3 * * *"
    batch_size: WholeNumber = Field(5000, ge=1, le=100_000)
    workers: WholeNumber = Field(1, ge=1, le=32)  # stores swept at once by one process
    requests: RequestOptions = Field(default_factory=RequestOptions)
    metrics: MetricsOptions | None = None
    stores: dict[StoreName, Store]
    rules: tuple[Rule, ...] = ()

    _path: Path | None = PrivateAttr(default=None)
    _digest: str = PrivateAttr(default="")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def digest(self) -> str:
        """SHA-256 of the policy file as written, to record policy changes in the ledger."""
        return self._digest

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    @property
    def secret_bytes(self) -> bytes:
        """``secret_key`` as bytes (at least 32), checked when the policy was loaded."""
        return cast(SecretBytes, self.secret_key).get_secret_value()

    @property
    def signing_private_key(self) -> Ed25519PrivateKey | None:
        """``signing_key`` as an Ed25519 private key, or None; it parsed when the policy was
        loaded, so this does not fail."""
        if self.signing_key is None:
            return None
        return load_signing_key(cast(SecretBytes, self.signing_key).get_secret_value())

    def with_origin(self, path: Path | None, raw: bytes) -> Policy:
        self._path = path
        self._digest = hashlib.sha256(raw).hexdigest()
        return self


def known_keys() -> list[str]:
    """Every key a policy file may use, for "did you mean" hints on unknown keys."""
    models: list[type[BaseModel]] = [
        Policy, Store, Backups, Rule, AnonymizeOptions, IsolateOptions, RequestOptions,
        MetricsOptions, SecretRef, NullStrategy, DefaultStrategy, ConstantStrategy, MaskStrategy,
        HmacStrategy, FakeStrategy, TruncateDateStrategy, RoundStrategy]
    return sorted({f.alias or name for m in models for name, f in m.model_fields.items()})
