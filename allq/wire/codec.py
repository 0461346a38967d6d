"""Strict CBOR for frame plaintexts, and the message envelopes (wire.md §4, §5.1, §5.5).

Charter: pure functions, no I/O. `decode` accepts exactly one definite-length CBOR map
built from the allowed types (integers, floats, byte and text strings, arrays, maps with
text keys, true, false, null), at most 8 containers deep, without tags, duplicate keys,
trailing bytes or invalid UTF-8. `encode` refuses anything else and emits definite
lengths only. Envelope checks look at `id`, `op`, `result`, `error`, `event`, `closing`
only; op arguments are validated by the engine (semantics.md §13), so NaN and infinities
pass here.

Decoding failures raise `RemoteProtocolError`; encoding refusals `LocalProtocolError`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any, Final, NoReturn, cast

import cbor2

from allq.wire.transport import LocalProtocolError, Message, RemoteProtocolError

MAX_DEPTH: Final = 8
U32_MAX: Final = 0xFFFF_FFFF
# CBOR major types 0/1 hold integers in [-2**64, 2**64 - 1]; beyond that cbor2 would emit
# tag 2/3 bignums, which decoders here refuse.
INT_MIN: Final = -(2**64)
INT_MAX: Final = 2**64 - 1


class _NoTags(dict[int, object]):
    """A `semantic_decoders` mapping that refuses every tag number (wire.md §4)."""

    def __contains__(self, tag: object) -> bool:
        return True

    def __getitem__(self, tag: int) -> NoReturn:
        raise ValueError(f"CBOR tag {tag} is not allowed")

    def get(self, tag: int, default: object = None) -> NoReturn:
        raise ValueError(f"CBOR tag {tag} is not allowed")


_NO_TAGS: Final = _NoTags()


def _tag_hook(decoder: object, tag: object) -> NoReturn:
    raise ValueError("CBOR tags are not allowed")


_SCALARS: Final = frozenset({str, bytes, float, bool, type(None)})


def _check_value(value: object, depth: int, error: type[Exception]) -> None:
    """The allowed-types walk; `depth` counts containers (the top-level map is 1).

    Exact built-in types take a fast path (the common case: maps of scalars); anything
    else, subclasses included, goes through `_check_other`.
    """
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:  # type: ignore[operator]
            raise error("integer out of the CBOR range")
        return
    if kind is dict:
        if depth > MAX_DEPTH:
            raise error(f"nesting deeper than {MAX_DEPTH}")
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str and not isinstance(key, str):
                raise error("map keys must be text strings")
            if type(item) not in _SCALARS:
                _check_value(item, depth + 1, error)
        return
    if kind is list:
        if depth > MAX_DEPTH:
            raise error(f"nesting deeper than {MAX_DEPTH}")
        for item in value:  # type: ignore[attr-defined]
            if type(item) not in _SCALARS:
                _check_value(item, depth + 1, error)
        return
    _check_other(value, depth, error)


def _check_other(value: object, depth: int, error: type[Exception]) -> None:
    if value is None or isinstance(value, (bool, str, bytes, bytearray, float)):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise error("integer out of the CBOR range")
        return
    if depth > MAX_DEPTH:
        raise error(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, depth + 1, error)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise error("map keys must be text strings")
            _check_value(item, depth + 1, error)
        return
    raise error(f"value of type {type(value).__name__} is not allowed")


def _new_decoder() -> cbor2.CBORDecoder:
    return cbor2.CBORDecoder(
        io.BytesIO(),
        tag_hook=_tag_hook,
        semantic_decoders=cast("Mapping[int, Any]", _NO_TAGS),
        str_errors="strict",
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


#: Idle strict decoders, reused (building one costs more than decoding a small frame). A
#: caller pops one (or builds one) and pushes it back after a clean decode, so threads never
#: share one (list pop/append are atomic) and one that failed is dropped with its state.
_idle_decoders: list[cbor2.CBORDecoder] = []


def decode_item(data: bytes, error: type[Exception] = RemoteProtocolError) -> object:
    """Strictly decode one CBOR data item and nothing after it (wire.md §4).

    No tags, no indefinite lengths, no duplicate keys, depth ≤ 8, strict UTF-8, only the
    allowed types. Shared by the wire (maps) and the persistence log (arrays).

    Raises:
        error: (RemoteProtocolError by default) with the reason.
    """
    fp = io.BytesIO(data)
    try:
        decoder = _idle_decoders.pop()
    except IndexError:
        decoder = _new_decoder()
    decoder.fp = fp
    try:
        value = decoder.decode()
    except Exception as exc:  # cbor2 raises CBORDecodeError, EOF, ValueError, MemoryError …
        raise error(f"invalid CBOR: {exc}") from None
    _idle_decoders.append(decoder)
    if fp.tell() != len(data):
        raise error("trailing bytes after the CBOR item")
    _check_value(value, 1, error)
    return value


def decode(plaintext: bytes) -> Message:
    """Decode one frame plaintext: one CBOR map and nothing after it.

    Raises:
        RemoteProtocolError: not strictly valid CBOR, a disallowed type, not a map.
    """
    value = decode_item(plaintext)
    if not isinstance(value, dict):
        raise RemoteProtocolError("the frame is not a CBOR map")
    for key in value:
        if not isinstance(key, str):
            raise RemoteProtocolError("map keys must be text strings")
    return value


def encode(message: Mapping[str, object]) -> bytes:
    """Encode a message map with definite lengths only.

    Raises:
        LocalProtocolError: a disallowed type, a non-text key, nesting deeper than 8.
    """
    if not isinstance(message, Mapping):
        raise LocalProtocolError("a message must be a map")
    _check_value(message, 1, LocalProtocolError)
    try:
        return cbor2.dumps(dict(message) if not isinstance(message, dict) else message)
    except Exception as exc:
        raise LocalProtocolError(f"cannot encode: {exc}") from None


# --- envelopes ----------------------------------------------------------------------------


def _is_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= U32_MAX


def _is_opt_text(message: Mapping[str, object], key: str) -> bool:
    return key not in message or message[key] is None or isinstance(message[key], str)


def request_envelope_problem(message: Mapping[str, object]) -> str | None:
    """Why `message` is not a request `{id ≥ 1, op: text, …}` or the client's closing frame.

    The client's `{id: 0, closing: "client"}` is the only id-0 frame a client sends.
    Returns None when the envelope is valid.
    """
    ident = message.get("id")
    if not _is_id(ident):
        return "'id' must be an integer 0 … 4294967295"
    if ident == 0:
        if not isinstance(message.get("closing"), str):
            return "id 0 is reserved for closing frames"
        return None
    if not isinstance(message.get("op"), str):
        return "'op' must be a text string"
    return None


def response_envelope_problem(message: Mapping[str, object]) -> str | None:
    """Why `message` is not a server answer, event or closing frame (None if it is).

    Answers: `{id ≥ 1, result}` or `{id ≥ 1, error: text, message: text, field?,
    retry_after?}`. Server frames: `{id: 0, event: text, …}` or `{id: 0, closing: text,
    error?, message?}`. Unknown extra keys are ignored (forward compatibility).
    """
    ident = message.get("id")
    if not _is_id(ident):
        return "'id' must be an integer 0 … 4294967295"
    if ident == 0:
        if isinstance(message.get("event"), str):
            return None
        if isinstance(message.get("closing"), str):
            if not (_is_opt_text(message, "error") and _is_opt_text(message, "message")):
                return "closing frame: 'error' and 'message' must be text"
            return None
        return "an id-0 frame needs 'event' or 'closing'"
    has_result, has_error = "result" in message, "error" in message
    if has_result == has_error:
        return "an answer holds exactly one of 'result' and 'error'"
    if has_result:
        if not isinstance(message["result"], (dict, list)):
            return "'result' must be a map or an array"
        return None
    if not isinstance(message["error"], str) or not isinstance(message.get("message"), str):
        return "an error answer needs text 'error' and 'message'"
    if not _is_opt_text(message, "field"):
        return "'field' must be text"
    retry = message.get("retry_after")
    if retry is not None and (
        isinstance(retry, bool) or not isinstance(retry, (int, float)) or not math.isfinite(retry)
    ):
        return "'retry_after' must be a number"
    return None
