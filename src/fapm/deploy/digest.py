"""Digests of files derived from a model file: exported graphs and the runtime cache.

A graph exported from a model file (``fapm export``, or the ONNX cache of
``FAPM.load(runtime=...)``) gets a sidecar ``<file>.fapm-digest.json``::

    {"format": "fapm-digest", "files": {"model.onnx": "<sha256>", ...},
     "model_checksum": "<the model file's checksum>", "signature": "<HMAC-SHA256>" | null}

With a signing key (``FAPM_MODEL_KEY`` / ``FAPM_MODEL_KEY_FILE``, :mod:`fapm.model_file`) the
sidecar is signed, and :func:`verify` refuses a graph whose sidecar is missing, unsigned or
does not match its bytes: an edited cache or export can no longer score as "verified". Without
a key, :func:`verify` still refuses a graph whose bytes differ from its recorded sha256
(corruption), but reports it as not verified.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from fapm.errors import FapmError
from fapm.fileio import write_text_atomically

SUFFIX = ".fapm-digest.json"
FORMAT = "fapm-digest"


class DigestError(FapmError, ValueError):
    """A derived file (exported graph, cache) that does not match its recorded digest."""

    hint = "export the model again from its model.safetensors (fapm export), or delete the cache ($FAPM_CACHE)"


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def _members(path: Path) -> list[Path]:
    """The files a graph is made of (OpenVINO IR: the ``.xml`` and its ``.bin``)."""
    members = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        members.append(path.with_suffix(".bin"))
    return members


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _signed_text(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write(path: str | Path, model_checksum: str) -> Path:
    """Record ``path``'s digest (signed with the key when one is set) in its sidecar."""
    from fapm.model_file import signing_key

    path = Path(path)
    record: dict = {
        "format": FORMAT,
        "files": {member.name: _sha256(member) for member in _members(path)},
        "model_checksum": model_checksum,
    }
    key = signing_key()
    record["signature"] = hmac.new(key, _signed_text(record), hashlib.sha256).hexdigest() if key else None
    return write_text_atomically(sidecar(path), json.dumps(record, indent=1))


def verify(path: str | Path, model_checksum: str | None = None) -> bool:
    """Check ``path`` against its sidecar; True when verified with the signing key.

    Raises:
        DigestError: a key is set and the sidecar is missing, unsigned or signed with another
            key; or the bytes (or the model checksum asked for) differ from the record.
    """
    from fapm.model_file import signing_key

    path = Path(path)
    key = signing_key()
    side = sidecar(path)
    if not side.is_file():
        if key is not None:
            raise DigestError(
                f"{path} has no digest ({side.name}) but a signing key is set: only graphs exported from a "
                "verified model file are used"
            )
        return False
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
        files = dict(record["files"])
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise DigestError(f"{side}: not a readable {FORMAT} record ({err})") from err
    if key is not None:
        want = hmac.new(key, _signed_text(record), hashlib.sha256).hexdigest()
        got = record.get("signature")
        if not isinstance(got, str) or not hmac.compare_digest(got, want):
            raise DigestError(f"{path}: its digest is not signed with the signing key (tampered, or another key)")
    if model_checksum is not None and record.get("model_checksum") != model_checksum:
        raise DigestError(f"{path} was exported from another model file than the one loaded")
    members = {member.name: member for member in _members(path)}
    if set(files) != set(members):
        raise DigestError(f"{path}: its digest lists {sorted(files)}, found {sorted(members)}")
    for name, member in members.items():
        if not hmac.compare_digest(str(files[name]), _sha256(member)):
            raise DigestError(f"{member} has changed since it was exported (its sha256 differs from its digest)")
    return key is not None
