"""Weighted shares through the real appliance: 8 backlogged tenants, weights 1–4."""

from __future__ import annotations

import aiohttp
import pytest
from appliance import sim_model
from weighted_flood import assert_shares, flood, tenants

pytestmark = pytest.mark.slow

async def test_eight_tenants_get_service_in_proportion_to_weight(appliance_factory) -> None:
    app = appliance_factory({"models": [sim_model(max_num_seqs=8, step_s=0.005)],
                             "tenants": tenants()})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        served = await flood(s, app.url)
    assert_shares(served)
