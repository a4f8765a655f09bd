"""Authentication that cannot go stale (issue 14 item 6): the front door's key table is
the scheduler's alone, and ``auth: none`` needs both the scheduler's view and its own."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import pytest

from infergridd import config
from infergridd.frontdoor.auth import Authenticator
from infergridd.frontdoor.errors import ApiError
from infergridd.protocol import AuthEntry


def _cfg(auth: str = "keys") -> config.Config:
    return config.loads(f"version: 1\nauth: {auth}\ntenants: [{{name: a, keys: [sk-a]}}, "
                        f"{{name: b, keys: ['sha256:{hashlib.sha256(b'sk-b').hexdigest()}']}}]")


def _h(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def _refused(a: Authenticator, header: str | None) -> ApiError:
    with pytest.raises(ApiError) as err:
        a.tenant(header)
    return err.value


def test_no_key_works_before_the_schedulers_table() -> None:
    """A configured key that `infergridctl tenant rotate-key` took away lives on in the
    file: before the scheduler's table arrives the front door must not take it (it did:
    the table started as the configuration's keys).  503 + Retry-After, not 401."""
    a = Authenticator(_cfg())
    err = _refused(a, "Bearer sk-a")
    assert err.status == 503 and err.code == "scheduler_unavailable"
    assert err.retry_after_s == 1.0
    assert not a.ready


def test_a_rotated_config_key_is_refused_once_the_table_comes() -> None:
    a = Authenticator(_cfg())
    # the scheduler's table after `tenant rotate-key a`: a's configured key is gone
    a.update(3, [AuthEntry(_h(b"sk-new"), "a"), AuthEntry(_h(b"sk-b"), "b")])
    assert a.ready
    assert a.tenant("Bearer sk-new") == "a"
    assert a.tenant("bearer sk-b") == "b"
    for bad in (None, "", "Bearer", "Basic sk-new", "Bearer sk-a", "Bearer sk-c"):
        err = _refused(a, bad)
        assert err.status == 401 and err.code == "invalid_api_key", bad
    # and the next change replaces the table again (remove b)
    a.update(4, [AuthEntry(_h(b"sk-new"), "a")])
    assert _refused(a, "Bearer sk-b").status == 401


def test_auth_none_needs_both_views(caplog: pytest.LogCaptureFixture) -> None:
    # both say none: open, as the scheduler's tenant
    a = Authenticator(_cfg("none"))
    assert _refused(a, None).status == 503  # not open on its own view alone
    a.set_none_tenant("default")
    assert a.tenant(None) == "default"
    # the front door's file says none, the scheduler's says keys: keys stay required
    b = Authenticator(_cfg("none"))
    b.update(1, [AuthEntry(_h(b"sk-a"), "a")])
    with caplog.at_level(logging.ERROR, logger="infergrid.frontdoor"):
        b.set_none_tenant("")
    assert _refused(b, None).status == 401
    assert b.tenant("Bearer sk-a") == "a"
    assert "auth: none" in caplog.text
    # the scheduler says none, this front door's file says keys: keys stay required
    c = Authenticator(_cfg("keys"))
    c.update(1, [AuthEntry(_h(b"sk-a"), "a")])
    c.set_none_tenant("default")
    assert _refused(c, None).status == 401
    assert c.tenant("Bearer sk-a") == "a"
    # a scheduler that closes again closes this front door too
    a.set_none_tenant("")
    assert _refused(a, None).status == 503


def test_a_request_waits_for_the_first_table_then_503() -> None:
    """A restarted front door serves before its first Snapshot: a request waits for the
    table (briefly) rather than fail at once, and is let in as soon as it comes."""
    async def scenario() -> None:
        a = Authenticator(_cfg())
        t0 = time.monotonic()
        await a.wait_ready(0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        assert _refused(a, "Bearer sk-a").status == 503
        asyncio.get_running_loop().call_later(0.05, a.update, 1, [AuthEntry(_h(b"sk-a"), "a")])
        t0 = time.monotonic()
        await a.wait_ready(5)
        assert time.monotonic() - t0 < 2
        assert a.tenant("Bearer sk-a") == "a"

    asyncio.run(scenario())
