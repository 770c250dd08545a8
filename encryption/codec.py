"""The payload codec: every payload our processes write to Temporal, encrypted with AES-256-GCM.

Temporal stores what the codec returns: workflow inputs, results, signal, update and query
arguments and answers, activity inputs and outputs, failures' messages and stack traces, and
the summary a start sets. Search attributes are not payloads the codec sees: they hold no free
text (see the README's security section).

An encrypted payload's metadata names its encoding (`binary/encrypted`) and the id of the key
that wrote it; its data is a fresh 12-byte nonce followed by the ciphertext of the original
payload (metadata and data), authenticated together with the key id. A payload that is not
encrypted passes through unchanged: histories written before encryption was switched on, and
input sent by a plain `temporal` CLI without the codec endpoint, still decode.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from encryption.keys import KeyRing

ENCODING: Final = b"binary/encrypted"
KEY_ID_METADATA: Final = "encryption-key-id"
NONCE_BYTES: Final = 12


class DecryptionError(ValueError):
    """A payload cannot be decrypted; the message names the key id, never a key."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads, with the writing key's id in each payload's metadata."""

    def __init__(self, keys: KeyRing) -> None:
        self._keys = keys
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}

    @property
    def writer(self) -> str:
        """The id of the key that encrypts."""
        return self._keys.writer

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload with the writing key."""
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt each encrypted payload; pass the others through."""
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """One payload, encrypted with the writing key."""
        key_id = self._keys.writer
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        """One payload as it was before encryption (unchanged when it is not encrypted).

        Raises:
            DecryptionError: the key that wrote it is not held, or the payload was altered.
        """
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"a payload was encrypted with key {key_id!r}, which {self._keys.source} does "
                "not hold: add that key (below the writing one) to read it"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise DecryptionError(
                f"a payload under key {key_id!r} does not authenticate: it was altered, or the "
                f"key of that id in {self._keys.source} is not the one that wrote it"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded

    def decrypt_all(self, message: Message) -> None:
        """Decrypt, in place, every payload anywhere inside `message` (a whole history, say)."""
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                items = list(value.values())
            elif field.is_repeated:
                items = list(value)
            else:
                items = [value]
            for item in items:
                if not isinstance(item, Message):
                    continue
                if isinstance(item, Payload):
                    item.CopyFrom(self.decrypt(item))
                else:
                    self.decrypt_all(item)


def encrypted_data_converter(keys: KeyRing) -> DataConverter:
    """The project's data converter (pydantic JSON) with every payload encrypted.

    Failures' messages and stack traces are moved into an encoded payload as well: a TapRaise
    error text can quote what was sent.
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
