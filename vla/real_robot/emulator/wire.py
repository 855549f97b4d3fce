"""Wire formats of the two servo protocols, written from the vendors' protocol documents (not the SDKs),
so the emulator is an independent peer for the SDKs to talk to.

Feetech SCS/STS (Dynamixel 1.0-like): FF FF ID LEN INST P.. CHK, LEN = len(P) + 2, CHK = ~sum(ID..P) & 0xFF;
status FF FF ID LEN ERR P.. CHK. Little-endian registers.
Dynamixel 2.0: FF FF FD 00 ID LEN_L LEN_H INST P.. CRC_L CRC_H, LEN = len(P) + 3, CRC-16 (poly 0x8005) over
everything before it, FF FF FD inside the payload stuffed to FF FF FD FD; status INST 0x55 then ERR.
"""

from __future__ import annotations

from dataclasses import dataclass

PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x82, 0x83
BROADCAST = 0xFE


@dataclass(frozen=True)
class Packet:
    id: int
    inst: int
    params: bytes


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC = _crc_table()


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) ^ _CRC[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


class FeetechWire:
    name = "feetech"
    address_bytes = 1  # register address and length are one byte each

    @staticmethod
    def checksum(body: bytes) -> int:
        return ~sum(body) & 0xFF

    def parse(self, buf: bytearray) -> tuple[Packet | None, int]:
        """(packet or None, bytes consumed). None with consumed > 0: garbage or a bad checksum was skipped."""
        start = buf.find(b"\xff\xff")
        if start < 0:
            return None, max(0, len(buf) - 1)
        if start > 0:
            return None, start
        if len(buf) < 4:
            return None, 0
        length = buf[3]
        total = length + 4
        if buf[2] == 0xFF or length < 2:  # 0xFF is no servo id: this was not a header
            return None, 1
        if len(buf) < total:
            return None, 0
        body = bytes(buf[2 : total - 1])
        if self.checksum(body) != buf[total - 1]:
            return None, total  # a real servo ignores a packet whose checksum is wrong
        return Packet(body[0], body[2], body[3:]), total

    def status(self, servo_id: int, error: int, params: bytes = b"", corrupt: bool = False) -> bytes:
        body = bytes([servo_id, len(params) + 2, error]) + params
        chk = self.checksum(body) ^ (0xFF if corrupt else 0)
        return b"\xff\xff" + body + bytes([chk])

    @staticmethod
    def read_args(p: bytes) -> tuple[int, int]:
        return p[0], p[1]

    @staticmethod
    def write_args(p: bytes) -> tuple[int, bytes]:
        return p[0], p[1:]

    @staticmethod
    def sync_header(p: bytes) -> tuple[int, int, bytes]:
        return p[0], p[1], p[2:]

    def ping_reply(self, regs: bytearray) -> bytes:
        return b""


def stuff(payload: bytes) -> bytes:
    out = bytearray()
    for b in payload:
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3:-1] == b"\xff\xff":
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(payload):
        out.append(payload[i])
        if payload[i] == 0xFD and len(out) >= 3 and out[-3:-1] == b"\xff\xff" and payload[i + 1 : i + 2] == b"\xfd":
            i += 1  # skip the stuffed byte
        i += 1
    return bytes(out)


class DynamixelWire:
    name = "dynamixel"
    address_bytes = 2

    def parse(self, buf: bytearray) -> tuple[Packet | None, int]:
        start = buf.find(b"\xff\xff\xfd\x00")
        if start < 0:
            return None, max(0, len(buf) - 3)
        if start > 0:
            return None, start
        if len(buf) < 7:
            return None, 0
        length = buf[5] | (buf[6] << 8)
        total = length + 7
        if length < 3:
            return None, 4
        if len(buf) < total:
            return None, 0
        crc = buf[total - 2] | (buf[total - 1] << 8)
        if crc16(bytes(buf[: total - 2])) != crc:
            return None, total
        payload = unstuff(bytes(buf[7 : total - 2]))
        return Packet(buf[4], payload[0], payload[1:]), total

    def status(self, servo_id: int, error: int, params: bytes = b"", corrupt: bool = False) -> bytes:
        payload = stuff(bytes([0x55, error]) + params)
        head = b"\xff\xff\xfd\x00" + bytes([servo_id]) + (len(payload) + 2).to_bytes(2, "little")
        crc = crc16(head + payload) ^ (0xFFFF if corrupt else 0)
        return head + payload + crc.to_bytes(2, "little")

    @staticmethod
    def read_args(p: bytes) -> tuple[int, int]:
        return int.from_bytes(p[0:2], "little"), int.from_bytes(p[2:4], "little")

    @staticmethod
    def write_args(p: bytes) -> tuple[int, bytes]:
        return int.from_bytes(p[0:2], "little"), p[2:]

    @staticmethod
    def sync_header(p: bytes) -> tuple[int, int, bytes]:
        return int.from_bytes(p[0:2], "little"), int.from_bytes(p[2:4], "little"), p[4:]

    def ping_reply(self, regs: bytearray) -> bytes:
        return bytes(regs[0:2]) + bytes(regs[6:7])  # model number, firmware version
