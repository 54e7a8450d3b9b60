from __future__ import annotations

import pytest

from fwtop.firewall.nft import _zone


@pytest.mark.parametrize(("chain", "zone"), [
    ("filter_IN_public", "public"),
    ("filter_IN_public_allow", "public"),
    ("filter_FWD_internal_deny", "internal"),
    ("nat_PRE_dmz_dnat", "dmz"),
    ("filter_OUT_my_zone_log", "my_zone"),
    ("filter_INPUT", None),
])
def test_zone_from_firewalld_chain_names(chain: str, zone: str | None) -> None:
    assert _zone("firewalld", chain) == zone


def test_zones_only_in_firewalld_tables() -> None:
    assert _zone("filter", "filter_IN_public") is None
