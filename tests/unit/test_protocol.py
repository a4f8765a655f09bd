"""The wire format is a contract between units that restart independently: pin it."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infergridd import protocol as p

GOLDEN = [
    (p.Submit(request_id="r1", tenant="acme", model="demo", prompt_tokens=12, max_tokens=64),
     "86a174a67375626d6974aa726571756573745f6964a27231a674656e616e74a461636d65a56d6f64656ca46465"
     "6d6fad70726f6d70745f746f6b656e730caa6d61785f746f6b656e7340"),
    (p.Dispatch(request_id="r1", engine_id="demo-0", endpoint="http://127.0.0.1:9", api_key="k",
                engine_priority=3),
     "86a174a86469737061746368aa726571756573745f6964a27231a9656e67696e655f6964a664656d6f2d30a8"
     "656e64706f696e74b2687474703a2f2f3132372e302e302e313a39a76170695f6b6579a16baf656e67696e65"
     "5f7072696f7269747903"),
    (p.Done(request_id="r1", prompt_tokens=12, completion_tokens=64, seq=7),
     "85a174a4646f6e65aa726571756573745f6964a27231ad70726f6d70745f746f6b656e730cb1636f6d706c65"
     "74696f6e5f746f6b656e7340a373657107"),
    (p.Heartbeat(instance="abc", seq=1, ack_done_seq=7),
     "84a174a26862a8696e7374616e6365a3616263a373657101ac61636b5f646f6e655f73657107"),
    (p.Hello(role="frontdoor", instance="fd1", protocol_version="1.0", pid=42),
     "85a174a568656c6c6fa4726f6c65a966726f6e74646f6f72a8696e7374616e6365a3666431b070726f746f63"
     "6f6c5f76657273696f6ea3312e30a37069642a"),
    (p.Reject(request_id="r2", http_status=429, code="rate_limit_exceeded", reason="quota",
              retry_after_s=1.5),
     "86a174a672656a656374aa726571756573745f6964a27232ab687474705f737461747573cd01ada4636f6465"
     "b3726174655f6c696d69745f6578636565646564a6726561736f6ea571756f7461ad72657472795f61667465"
     "725f73cb3ff8000000000000"),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN, ids=[type(m).__name__ for m, _ in GOLDEN])
def test_golden_bytes(msg: p.Message, hexbytes: str) -> None:
    assert p.encode(msg).hex() == hexbytes
    assert p.decode(bytes.fromhex(hexbytes)) == msg


def test_hello_always_carries_protocol_version() -> None:
    raw = msgspec.msgpack.decode(p.encode(p.Hello(role="supervisor", instance="x",
                                                  protocol_version=p.PROTOCOL_VERSION)))
    assert raw["protocol_version"] == p.PROTOCOL_VERSION


def test_unknown_fields_from_a_newer_peer_are_ignored() -> None:
    raw = msgspec.msgpack.decode(p.encode(p.Done(request_id="r", completion_tokens=3)))
    raw["field_from_the_future"] = [1, 2, 3]
    assert p.decode(msgspec.msgpack.encode(raw)) == p.Done(request_id="r", completion_tokens=3)


def test_unknown_tag_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(msgspec.msgpack.encode({"t": "no-such-message"}))


def test_wrong_type_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(msgspec.msgpack.encode({"t": "done", "request_id": 5}))


def test_protocol_major() -> None:
    assert p.protocol_major("1.7") == 1
    assert p.protocol_major("garbage") == -1
    assert p.protocol_major("") == -1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    try:
        p.decode(data)
    except p.ProtocolError:
        pass


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["hello", "done", "submit", "dispatch", "progress", "snapshot",
                        "engine_update", "ctl", "hb", "x"]),
       st.dictionaries(st.text(max_size=16), _values, max_size=6))
def test_fuzz_structured_garbage_only_raises_protocol_error(tag: str, body: dict) -> None:
    body["t"] = tag
    try:
        p.decode(msgspec.msgpack.encode(body))
    except p.ProtocolError:
        pass
