"""The published JSON shapes of the rule model (`fwtop rules --json`); field names are stable."""

from __future__ import annotations

from typing import Any

from fwtop.core.model import Counters, Policy, Rule, Ruleset


def _counters(c: Counters | None) -> dict[str, int] | None:
    return None if c is None else {"packets": c.packets, "bytes": c.bytes}


def rule_dict(rule: Rule) -> dict[str, Any]:
    return {
        "backend": rule.backend,
        "family": rule.family,
        "table": rule.table,
        "chain": rule.chain,
        "handle": rule.handle,
        "position": rule.position,
        "comment": rule.comment,
        "text": rule.text,
        "verdict": rule.verdict,
        "target": rule.target,
        "counters": _counters(rule.counters),
        "zone": rule.zone,
        "key": rule.key,
        "uncertain": rule.uncertain,
    }


def policy_dict(policy: Policy) -> dict[str, Any]:
    return {
        "backend": policy.backend,
        "family": policy.family,
        "table": policy.table,
        "chain": policy.chain,
        "verdict": policy.verdict,
        "counters": _counters(policy.counters),
    }


def ruleset_dict(ruleset: Ruleset, netns: str | None) -> dict[str, Any]:
    chains = [
        {"backend": c.backend, "family": c.family, "table": c.table, "chain": c.name,
         "hook": c.hook, "priority": c.priority, "type": c.type, "zone": c.zone,
         "rules": len(c.rules)}
        for c in ruleset.chains()
    ]
    return {
        "netns": netns,
        "backends": [{"backend": b.backend, "available": b.available, "reason": b.reason}
                     for b in ruleset.backends],
        "rules": [rule_dict(r) for r in ruleset.rules()],
        "policies": [policy_dict(p) for p in ruleset.policies()],
        "chains": chains,
        "warnings": list(ruleset.warnings),
    }
