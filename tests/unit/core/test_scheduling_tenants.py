"""TenantRegistry: validation, keys, configured vs effective, persistence of runtime changes."""

from __future__ import annotations

import json

import pytest
from test_scheduling_harness import make_cfg

from infergridd.config import hash_key
from infergridd.core.tenants import TenantRegistry
from infergridd.keys import new_key


def registry(**kw) -> TenantRegistry:
    tenants = kw.pop("tenants", [{"name": "acme", "keys": ["sk-acme"], "weight": 2, "rpm": 30},
                                 {"name": "beta", "keys": ["sk-beta"]}])
    return TenantRegistry(make_cfg(tenants=tenants, **kw), new_key)


@pytest.mark.parametrize("call,message", [
    (lambda r: r.set_weight("nobody", 1), "unknown tenant 'nobody'"),
    (lambda r: r.set_weight("acme", 0), "weight must be greater than 0"),
    (lambda r: r.set_weight("acme", "-1"), "weight must be greater than 0"),
    (lambda r: r.set_weight("acme", "heavy"), "weight must be a number"),
    (lambda r: r.set_weight("acme", float("nan")), "finite"),
    (lambda r: r.set_rate("acme", rpm=-5), "rpm cannot be negative"),
    (lambda r: r.set_rate("acme", tpm="lots"), "tpm must be a number"),
    (lambda r: r.set_rate("acme", rpm=True), "rpm must be a number"),
    (lambda r: r.set_rate("acme"), "give rpm, tpm, burst or unlimited"),
    (lambda r: r.set_rate("acme", rpm=1, unlimited=True), "cannot be combined"),
    (lambda r: r.add("acme"), "already exists"),
    (lambda r: r.add("bad name!"), "invalid tenant name"),
    (lambda r: r.add("new", weight=0), "weight must be greater than 0"),
    (lambda r: r.remove("nobody"), "unknown tenant"),
    (lambda r: r.rotate_key("nobody"), "unknown tenant"),
    (lambda r: r.effective("nobody"), "unknown tenant"),
])
def test_bad_input_is_refused_with_a_clear_message_and_changes_nothing(call, message) -> None:
    r = registry()
    before = (r.export(), r.version, r.auth_table())
    with pytest.raises(ValueError, match=message):
        call(r)
    assert (r.export(), r.version, r.auth_table()) == before


def test_add_returns_a_key_once_and_stores_only_its_hash() -> None:
    r = registry()
    v0, _ = r.auth_table()
    key = r.add("newco", weight="3")
    assert key.startswith("sk-ig-") and len(key) > 30
    v1, entries = r.auth_table()
    assert v1 > v0
    assert (hash_key(key), "newco") in [(e.key_sha256, e.tenant) for e in entries]
    assert key not in json.dumps(r.export())
    assert r.effective("newco")["weight"] == 3.0 and r.configured("newco") is None
    assert r.names() == ["acme", "beta", "newco"]


def test_rotate_key_replaces_and_add_key_adds() -> None:
    r = registry()
    new = r.rotate_key("acme")
    assert r.tenant_for_key("sk-acme") is None and r.tenant_for_key(new) == "acme"
    extra = r.add_key("acme")
    assert r.tenant_for_key(new) == r.tenant_for_key(extra) == "acme"


def test_configured_and_effective_views() -> None:
    r = registry()
    r.set_rate("acme", rpm="120", burst=10)
    r.set_weight("acme", 5)
    assert r.configured("acme")["rpm"] == 30 and r.configured("acme")["weight"] == 2
    eff = r.effective("acme")
    assert (eff["rpm"], eff["burst"], eff["weight"], eff["keys"]) == (120, 10, 5, 1)
    r.set_rate("acme", unlimited=True)
    assert (r.effective("acme")["rpm"], r.effective("acme")["tpm"]) == (0, 0)


def test_remove_revokes_keys_and_survives_a_restart() -> None:
    r = registry()
    r.remove("acme")
    assert r.tenant_for_key("sk-acme") is None and "acme" not in r.names()
    again = registry()
    again.import_(json.loads(json.dumps(r.export())))
    assert "acme" not in again.names() and again.tenant_for_key("sk-acme") is None
    key = again.add("acme")  # it can come back, with a new key only
    assert again.tenant_for_key("sk-acme") is None and again.tenant_for_key(key) == "acme"


def test_export_import_round_trip() -> None:
    r = registry()
    k1 = r.add("newco", weight=2)
    k2 = r.rotate_key("beta")
    r.set_rate("acme", tpm=1000)
    r.set_weight("newco", 4)
    again = registry()
    again.import_(json.loads(json.dumps(r.export())))
    assert again.export() == r.export()
    assert again.tenant_for_key(k1) == "newco" and again.tenant_for_key(k2) == "beta"
    assert again.effective("acme")["tpm"] == 1000 and again.effective("newco")["weight"] == 4
    assert again.tenant_for_key("sk-beta") is None


def test_an_override_equal_to_the_config_is_dropped() -> None:
    r = registry()
    r.set_weight("acme", 5)
    r.set_weight("acme", 2)
    assert r.export()["overrides"] == {}


def test_malformed_state_is_refused() -> None:
    r = registry()
    with pytest.raises(ValueError, match="weight"):
        r.import_({"added": {"x": {"weight": -1}}})
    with pytest.raises(ValueError, match="keys"):
        r.import_({"added": {"x": {"keys": ["plain-text-key"]}}})


def test_tenant_count_is_bounded() -> None:
    r = registry(max_tenants=3)
    r.add("three")
    with pytest.raises(ValueError, match="too many tenants"):
        r.add("four")


def test_auth_none_has_an_implicit_default_tenant() -> None:
    r = registry(tenants=[], auth="none")
    assert r.names() == ["default"]
    with pytest.raises(ValueError, match="cannot be removed"):
        r.remove("default")
