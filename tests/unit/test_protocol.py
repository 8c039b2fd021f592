"""LXC proxy datagrams: parsing and validation, table-driven, no privileges."""

from __future__ import annotations

import errno
import random

import pytest

from lxc_notify_plugin.errors import ProtocolError
from lxc_notify_plugin.kernel import NotifSizes
from lxc_notify_plugin.transport import lxc as protocol

SIZES = NotifSizes(80, 24, 64)
COOKIE = b"0123456789abc"


def datagram(**overrides: object) -> bytes:
    fields = dict(notif_id=0x1234, pid=77, nr=259, arch=0xC000003E, args=(1, 2, 3, 4),
                  init_pid=42, cookie=COOKIE, sizes=SIZES)
    fields.update(overrides)
    return protocol.build(**fields)  # type: ignore[arg-type]


def test_a_datagram_as_lxc_sends_it() -> None:
    raw = datagram()
    assert len(raw) == 149  # 136 + a 13-byte cookie, as seen from LXC 5.0.2
    notif = protocol.parse(raw, 3, SIZES)
    assert (notif.notif_id, notif.pid, notif.nr, notif.arch) == (0x1234, 77, 259, 0xC000003E)
    assert notif.args == (1, 2, 3, 4, 0, 0)
    assert (notif.init_pid, notif.cookie) == (42, COOKIE)


def test_reply_echoes_the_header_with_the_answer() -> None:
    notif = protocol.parse(datagram(), 3, SIZES)
    reply = notif.reply(error=errno.EPERM)
    assert len(reply) == protocol.REPLY_SIZE
    assert reply[:112] == datagram()[:112]
    assert protocol.unpack_reply(reply) == (0x1234, 0, -errno.EPERM, 0)
    assert protocol.unpack_reply(notif.reply(flags=1)) == (0x1234, 0, 0, 1)


def _mutate(offset: int, value: bytes) -> bytes:
    raw = bytearray(datagram())
    raw[offset:offset + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize(("raw", "fds", "reason"), [
    (b"", 3, "need at least 136"),
    (datagram()[:135], 3, "need at least 136"),
    (_mutate(0, b"\x01"), 3, "reserved"),
    (_mutate(16, b"\x58"), 3, "struct sizes"),
    (_mutate(24, b"\x20"), 3, "cookie length"),
    (datagram() + b"x", 3, "cookie length"),
    (datagram(), 2, "2 fds"),
    (datagram(), 4, "4 fds"),
    (_mutate(112, b"\x99"), 3, "response id"),
    (datagram(pid=0), 3, "bad pids"),
    (datagram(init_pid=-1), 3, "bad pids"),
])
def test_malformed_datagrams_are_refused(raw: bytes, fds: int, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        protocol.parse(raw, fds, SIZES)


def test_cookie_comparison() -> None:
    assert protocol.cookie_matches(b"abc", b"abc")
    assert not protocol.cookie_matches(b"abc", b"abd")
    assert not protocol.cookie_matches(b"abc", b"abcd")


def test_random_and_mutated_datagrams_only_ever_raise_protocol_error() -> None:
    """A fuzz pass (seeded, so repeatable): parse() must accept or refuse, never crash."""
    rng = random.Random(20261129)
    valid = datagram()
    for _ in range(5000):
        if rng.random() < 0.5:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 135, 136, 149, 300))))
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            raw = bytes(mutated[:rng.choice((len(mutated), rng.randrange(len(mutated))))])
        try:
            notif = protocol.parse(raw, rng.choice((2, 3, 3, 3)), SIZES)
        except ProtocolError:
            continue
        assert len(notif.reply(error=errno.EPERM)) == protocol.REPLY_SIZE
