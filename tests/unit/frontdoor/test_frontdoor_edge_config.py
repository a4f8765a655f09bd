"""The edge's configuration keys: each bad value is a ConfigError naming its key."""

from __future__ import annotations

import pytest

from infergridd import config


def _load(extra: str) -> config.Config:
    return config.loads("version: 1\nlisten: 127.0.0.1:8000\n" + extra)


@pytest.mark.parametrize("extra, key", [
    ("admin_listen: nowhere", "$.admin_listen"),
    ("admin_listen: '127.0.0.1:99999'", "$.admin_listen"),
    ("admin_listen: '127.0.0.1:8000'", "$.admin_listen"),  # the public port itself
    ("limits: {max_queued_bytes: lots}", "$.limits.max_queued_bytes"),
    ("limits: {max_queued_bytes_per_tenant: 1000}", "$.limits.max_queued_bytes_per_tenant"),
    ("limits: {max_queued_bytes: 0}", "$.limits.max_queued_bytes"),
    ("limits: {max_queued_requests: 0}", "$.limits.max_queued_requests"),
    ("limits: {max_connections: 0}", "$.limits.max_connections"),
    ("limits: {max_requests_per_connection: 0}", "$.limits.max_requests_per_connection"),
    ("limits: {header_timeout_s: 0}", "$.limits.header_timeout_s"),
    ("limits: {body_timeout_s: -1}", "$.limits.body_timeout_s"),
    ("limits: {keepalive_timeout_s: 0}", "$.limits.keepalive_timeout_s"),
])
def test_bad_edge_settings_name_their_key(extra: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        _load(extra)
    assert f"<config>: {key}:" in str(e.value), e.value


def test_defaults_and_sizes() -> None:
    c = _load("admin_listen: '127.0.0.1:8001'\nlimits: {max_queued_bytes: 1GiB}")
    assert c.admin_listen == "127.0.0.1:8001"
    assert config.parse_size(c.limits.max_queued_bytes) == 1024**3
    d = _load("")
    assert d.admin_listen == "" and d.scheduler.max_queued_per_tenant == 1000
    assert config.parse_size(d.limits.max_queued_bytes_per_tenant) == 64 * 1024**2
    assert d.limits.header_timeout_s == 10 and d.limits.max_connections == 4096
