"""The evaluator against the kernel on random rulesets (a small seed set; the long run is
`python -m tests.kernel.differential --seeds 200`)."""

from __future__ import annotations

import pytest

from tests.conftest import Namespaces, needs
from tests.kernel.differential import run_seed

pytestmark = [pytest.mark.kernel, needs("ip", "nft", "iptables-nft-restore")]


@pytest.mark.parametrize("seed", range(1, 9))
def test_random_ruleset_agrees_with_the_kernel(namespaces: Namespaces, seed: int) -> None:
    assert run_seed(namespaces, seed) >= 3  # most probes are certain and were checked
