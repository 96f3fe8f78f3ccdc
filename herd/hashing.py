"""The hash functions of the data plane, as BMv2's v1model computes them.

BMv2's ``HashAlgorithm.crc32`` over a field list equals ``zlib.crc32`` of the fields packed
big-endian; with ``max = m`` and base ``b`` the result is ``b + value mod m``. A constant
``bit<8>`` salt in front of the list gives each use its own independent hash. These
salts and field lists are mirrored in ``p4src/include/herd_hashes.p4``.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from numba import njit

SALT_FINGERPRINT = 0x00
SALT_STAGE_BASE = 0x01  # stage i uses SALT_STAGE_BASE + i
SALT_PRIMARY = 0x40
SALT_SECONDARY = 0x41

# fingerprint = 1 + crc32 mod (2^32 - 1): never 0, because 0 marks an empty slot
FINGERPRINT_MAX = 0xFFFFFFFF


def _crc32_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC32_TABLE = _crc32_table()


def _salt_terms() -> np.ndarray:
    """CRC-32 is affine over equal-length messages: crc(a ^ b) = crc(a) ^ crc(b) ^ crc(0).
    So crc({salt, 5-tuple}) = crc({0, 5-tuple}) ^ SALT_TERMS[salt], and one CRC over the
    5-tuple gives every salted hash of it."""
    zero = zlib.crc32(bytes(14))
    return np.array([zlib.crc32(bytes([s]) + bytes(13)) ^ zero for s in range(256)],
                    dtype=np.uint32)


SALT_TERMS = _salt_terms()


@njit(cache=True, inline="always")
def _crc_byte(crc: np.uint32, byte: int) -> np.uint32:
    return CRC32_TABLE[(crc ^ np.uint32(byte)) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))


@njit(cache=True, inline="always")
def _crc_u32(crc: np.uint32, v: int) -> np.uint32:
    crc = _crc_byte(crc, (v >> 24) & 0xFF)
    crc = _crc_byte(crc, (v >> 16) & 0xFF)
    crc = _crc_byte(crc, (v >> 8) & 0xFF)
    return _crc_byte(crc, v & 0xFF)


@njit(cache=True, inline="always")
def _crc_u16(crc: np.uint32, v: int) -> np.uint32:
    crc = _crc_byte(crc, (v >> 8) & 0xFF)
    return _crc_byte(crc, v & 0xFF)


@njit(cache=True)
def crc32_flow(salt: int, src: int, dst: int, sport: int, dport: int, proto: int) -> int:
    """crc32 of {bit<8> salt, srcAddr, dstAddr, srcPort, dstPort, protocol} (14 bytes)."""
    crc = np.uint32(0xFFFFFFFF)
    crc = _crc_byte(crc, salt & 0xFF)
    crc = _crc_u32(crc, src)
    crc = _crc_u32(crc, dst)
    crc = _crc_u16(crc, sport)
    crc = _crc_u16(crc, dport)
    crc = _crc_byte(crc, proto & 0xFF)
    return crc ^ np.uint32(0xFFFFFFFF)


@njit(cache=True)
def crc32_addr(salt: int, addr: int) -> int:
    """crc32 of {bit<8> salt, bit<32> addr} (5 bytes): the load balancer's hash of srcIP."""
    crc = np.uint32(0xFFFFFFFF)
    crc = _crc_byte(crc, salt & 0xFF)
    crc = _crc_u32(crc, addr)
    return crc ^ np.uint32(0xFFFFFFFF)


@njit(cache=True)
def flow_slots(
    src: int, dst: int, sport: int, dport: int, proto: int,
    stage_offsets: np.ndarray, stage_sizes: np.ndarray, out: np.ndarray,
) -> int:
    """Fill ``out`` with the flow's slot in each stage (offset into the flat table) and
    return its fingerprint."""
    base = crc32_flow(0, src, dst, sport, dport, proto)
    for i in range(len(stage_sizes)):
        h = base ^ SALT_TERMS[SALT_STAGE_BASE + i]
        out[i] = stage_offsets[i] + np.int64(h) % np.int64(stage_sizes[i])
    h = base ^ SALT_TERMS[SALT_FINGERPRINT]
    return np.uint32(1 + np.int64(h) % np.int64(FINGERPRINT_MAX))


@njit(cache=True)
def flows_slots(
    src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, proto: np.ndarray,
    stage_offsets: np.ndarray, stage_sizes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`flow_slots` for a whole flow table at once: (slots[flows, stages], fingerprints)."""
    n = len(src)
    slots = np.empty((n, len(stage_sizes)), dtype=np.int32)
    fps = np.empty(n, dtype=np.uint32)
    row = np.empty(len(stage_sizes), dtype=np.int64)
    for f in range(n):
        fps[f] = flow_slots(src[f], dst[f], sport[f], dport[f], proto[f],
                            stage_offsets, stage_sizes, row)
        for i in range(len(stage_sizes)):
            slots[f, i] = row[i]
    return slots, fps


def flow_key_bytes(salt: int, src: int, dst: int, sport: int, dport: int, proto: int) -> bytes:
    """The bytes BMv2 hashes for a salted 5-tuple field list (reference for tests)."""
    return struct.pack("!BIIHHB", salt, src, dst, sport, dport, proto)


def crc32_reference(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@njit(cache=True, inline="always")
def mix64(k1: np.uint64, k2: np.uint64) -> np.uint64:
    """A splitmix64-style finaliser over a two-word key: the host-side flow tables' slot hash
    (not a data-plane hash)."""
    h = k1 ^ (k2 * np.uint64(0x9E3779B97F4A7C15))
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h
