"""Secrets in the policy file: where they live (a string, ``{file: PATH}``, ``{env: NAME}`` or
``{credential: NAME}``), how they are read, and the checks every key passes when the policy
loads, so that a broken key stops retentiond before it touches anything.

Key files are read only when they are regular files, private to their owner (``chmod 600``)
and at most :data:`MAX_KEY_FILE` bytes: a FIFO, ``/dev/zero`` or a world-readable key is
refused with a message saying what to do.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretBytes,
    model_validator,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_KEY_FILE = 64 * 1024
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character "
          "device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
_GENERATE = "generate one with `openssl genpkey -algorithm ed25519 -out signing.key`"


class SecretRef(BaseModel):
    """Where a secret lives: exactly one of a file, an environment variable, or a systemd
    credential (``LoadCredential=``, read from ``$CREDENTIALS_DIRECTORY``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str | None = None
    env: str | None = None
    credential: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if sum(v is not None for v in (self.file, self.env, self.credential)) != 1:
            raise ValueError("give exactly one of file, env or credential")
        return self


# The forms a secret may be given in, for messages.
_GIVEN_AS = "a string, {file: PATH}, {env: NAME} or {credential: NAME}"


def _secret_source(value: Any) -> Any:
    """Accept a string or a mapping with exactly one of file/env/credential, with one clear
    message instead of one error per member of the ``str | SecretRef`` union."""
    if value is None or isinstance(value, str | SecretRef):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {_GIVEN_AS}, got {type(value).__name__}")
    unknown = sorted(set(value) - {"file", "env", "credential"}, key=str)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; a secret is {_GIVEN_AS}")
    given = {k: v for k, v in value.items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of file, env or credential ({_GIVEN_AS})")
    (kind, where), = given.items()
    if not isinstance(where, str) or not where:
        raise ValueError(f"{kind} must be a non-empty string")
    if kind == "credential" and ("/" in where or where in (".", "..")):
        raise ValueError(f"credential {where!r} must be a plain name inside "
                         "$CREDENTIALS_DIRECTORY, without '/'")
    return SecretRef(**{kind: where})


def read_secret(value: str | SecretRef) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if value.env is not None:
        if value.env not in os.environ:
            raise ValueError(f"environment variable {value.env} is not set")
        return os.environ[value.env].encode()
    if value.credential is not None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(f"credential {value.credential}: $CREDENTIALS_DIRECTORY is not set")
        return _read_key_file(Path(directory) / value.credential)
    return _read_key_file(Path(str(value.file)))


def _read_key_file(path: Path) -> bytes:
    try:
        data = read_regular_file(path, MAX_KEY_FILE, private=True)
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"key file {path} {exc}") from None
    return data.rstrip(b"\r\n")


def read_regular_file(path: Path, limit: int, *, private: bool = False) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes (and with
    ``private``, unreadable by group and others). Opened without blocking, so a FIFO or a device
    is refused instead of read. OSError when it cannot be opened, ValueError saying why it is
    refused."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        _check_stat(st, path, limit, private=private)
        with open(fd, "rb", buffering=0, closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # the file grew after fstat
        raise ValueError(f"is larger than {limit // 1024} KiB")
    return data


def check_appendable(path: Path) -> None:
    """A file retentiond appends to (``checkpoints.file``): an existing regular, writable
    file, or a new one in an existing, writable directory. ValueError saying why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir():
            raise ValueError(f"directory {parent} does not exist") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"directory {parent} is not writable") from None
        return
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a file')}, not a "
                         "regular file")
    if not os.access(path, os.W_OK):
        raise ValueError("is not writable")


def _check_stat(st: os.stat_result, path: Path, limit: int, *, private: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise ValueError(f"is {kind}, not a regular file")
    if private and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ValueError(f"is readable by group or others; chmod 600 {path}")
    if st.st_size > limit:
        raise ValueError(f"is larger than {limit // 1024} KiB")


def _resolve_secret_key(value: str | SecretRef) -> SecretBytes:
    data = read_secret(value)
    if len(data) < 32:
        raise ValueError(f"secret_key is {len(data)} bytes; it must be at least 32 bytes")
    return SecretBytes(data)


def load_signing_key(pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PEM text; ValueError saying what is wrong otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not pem.strip():
        raise ValueError(f"signing_key is empty; {_GENERATE}")
    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("signing_key is encrypted; give an unencrypted Ed25519 private key "
                         "(PEM) and protect the file with chmod 600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"signing_key is not a PEM private key; {_GENERATE}") from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey") or "other"
        raise ValueError(f"signing_key is not an Ed25519 key (it is {kind}); {_GENERATE}")
    return key


def _resolve_signing_key(value: str | SecretRef | None) -> SecretBytes | None:
    if value is None:
        return None
    data = read_secret(value)
    load_signing_key(data)
    return SecretBytes(data)


SecretKey = Annotated[str | SecretRef, BeforeValidator(_secret_source),
                     AfterValidator(_resolve_secret_key)]
SigningKey = Annotated[str | SecretRef | None, BeforeValidator(_secret_source),
                       AfterValidator(_resolve_signing_key)]
SecretString = Annotated[str | SecretRef, BeforeValidator(_secret_source),
                         AfterValidator(lambda v: read_secret(v).decode())]
