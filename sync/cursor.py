"""The opaque change cursor: where a device is in the log, and what it holds.

A cursor is msgpack plus a truncated HMAC, so a device cannot forge one; to the client
it is just bytes to store with its data. It records:

* ``seq``: the log position the device's data is consistent with;
* ``t``: when time windows were last applied (rows older than the window age out);
* per dataset, the shape hash and the hash of the device's partition values, so a
  schema change or a scope change (a new pricelist) resets exactly that dataset;
* ``snap``: datasets still to be snapshotted and the last key sent, so a snapshot is
  paged and resumable.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import msgpack

_MAC_BYTES = 12
_FORMAT = 1


@dataclass
class Cursor:
    tenant_id: int
    user_id: int
    seq: int
    t: int
    datasets: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (shape, values hash)
    snap: list[str] = field(default_factory=list)  # datasets still to snapshot, in order
    after: object = None  # last key sent of snap[0]


class CursorCodec:
    """Signs and checks cursors with a server secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"fieldsync-cursor:" + secret).digest()

    def encode(self, c: Cursor) -> bytes:
        body = msgpack.packb(
            [_FORMAT, c.tenant_id, c.user_id, c.seq, c.t, {k: list(v) for k, v in c.datasets.items()}, c.snap, c.after],
            use_bin_type=True,
        )
        return body + self._mac(body)

    def decode(self, raw: bytes) -> Cursor | None:
        """The cursor, or None when it is forged, corrupt or from another format: the
        device then gets a fresh snapshot, never an error it cannot get out of."""
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            fmt, tenant, user, seq, t, datasets, snap, after = msgpack.unpackb(body, raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None
        if fmt != _FORMAT:
            return None
        return Cursor(tenant, user, seq, t, {k: (v[0], v[1]) for k, v in datasets.items()}, list(snap), after)

    def snapshot_pending(self, raw: bytes | None, tenant_id: int, user_id: int) -> bool:
        """Whether the next pull from ``raw`` surely serves a snapshot page, told without I/O
        (admission control asks before any database work): no cursor, one this server
        cannot read or issued to another user (``Reader`` starts those over), or one in
        the middle of a snapshot. A cursor older than the compacted log, or from before a
        re-enrolment or a scope change, is found out only by the read: its first page is
        not told here, its next ones are."""
        cursor = self.decode(raw) if raw else None
        return cursor is None or (cursor.tenant_id, cursor.user_id) != (tenant_id, user_id) or bool(cursor.snap)

    def _mac(self, body: bytes) -> bytes:
        return hmac.digest(self._key, body, "sha256")[:_MAC_BYTES]
