"""Frames across the process boundary, in-process: split anywhere, linear cost, round trips."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from runtime_core.envelope import Envelope, Outcome, Wire
from runtime_core.framing import FrameReader
from runtime_core.messages import INFER, REPLY, infer_frame, parse_infer, parse_reply, reply_frame


def _stream() -> tuple[bytes, list[tuple[int, int, bytes]]]:
    frames = [
        (b"".join(infer_frame(7, Envelope(b'{"inputs": []}', Wire.JSON, 0, 1.5, 2.5), slot=3)), INFER, 7),
        (b"".join(reply_frame(8, Outcome(0, b"x" * 300, Wire.BINARY, 12, 0.1, 0.05))), REPLY, 8),
        (b"".join(infer_frame(9, Envelope(b"", Wire.GRPC))), INFER, 9),
    ]
    expected = [(kind, rid, frame[13:]) for frame, kind, rid in frames]
    return b"".join(f for f, _, _ in frames), expected


def _collect(chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
    reader = FrameReader()
    out = []
    for chunk in chunks:
        out.extend((kind, rid, bytes(payload)) for kind, rid, payload in reader.feed(chunk))
    return out


def test_frames_split_at_every_byte_come_out_whole() -> None:
    stream, expected = _stream()
    for cut in range(1, len(stream)):
        assert _collect([stream[:cut], stream[cut:]]) == expected, cut


def test_frames_fed_one_byte_at_a_time_come_out_whole() -> None:
    stream, expected = _stream()
    assert _collect([stream[i : i + 1] for i in range(len(stream))]) == expected


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40))
def test_frames_split_anywhere_come_out_whole(sizes: list[int]) -> None:
    stream, expected = _stream()
    bounds = [0, *itertools.accumulate(sizes)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds) if a < len(stream)]
    if bounds[-1] < len(stream):
        chunks.append(stream[bounds[-1] :])
    assert _collect(chunks) == expected


def test_a_large_frame_in_small_chunks_comes_out_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    frame = b"".join(reply_frame(1, Outcome(0, body)))
    reader = FrameReader()
    chunks = [frame[i : i + 65536] for i in range(0, len(frame), 65536)]
    for chunk in chunks[:-1]:
        assert list(reader.feed(chunk)) == []
    ((kind, rid, payload),) = list(reader.feed(chunks[-1]))
    assert (kind, rid) == (REPLY, 1)
    assert parse_reply(payload).body == body


def test_envelope_and_outcome_round_trip() -> None:
    envelope = Envelope(b"abc", Wire.BINARY, 2, 10.0, 9.0)
    ((_, _, payload),) = list(FrameReader().feed(b"".join(infer_frame(5, envelope, slot=11))))
    slot, back = parse_infer(payload)
    assert slot == 11
    assert (bytes(back.payload), back.wire, back.header_length, back.deadline, back.arrived) == (
        b"abc",
        Wire.BINARY,
        2,
        10.0,
        9.0,
    )
    outcome = Outcome(0, b"out", Wire.GRPC, 0, 0.5, 0.4, 0.1, 0.2, 0.1, 4, rows=3, batch_rows=9)
    ((_, _, payload),) = list(FrameReader().feed(b"".join(reply_frame(6, outcome))))
    assert parse_reply(payload) == outcome
