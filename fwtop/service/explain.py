"""`fwtop explain` and the TUI's explanation of a drop: load the namespace's ruleset and routing
facts, run the evaluator, add the plain-words reasons and the listener. Call it from a thread
that is inside the target namespace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fwtop.core.correlate import packet_of
from fwtop.core.evaluator import Evaluator, NetContext, Packet, Verdict
from fwtop.core.explain import ListenerInfo, explain, summary_line
from fwtop.core.model import Ruleset

__all__ = ["Explanation", "explain_in_namespace", "packet_of"]


@dataclass(slots=True)
class Explanation:
    verdict: Verdict
    reasons: list[str]
    listener: ListenerInfo | None

    def to_json(self) -> dict[str, Any]:
        data = self.verdict.to_json()
        data["reasons"] = list(self.reasons)
        data["listener"] = ({"pid": self.listener.pid, "name": self.listener.name}
                            if self.listener is not None else None)
        return data

    def text(self) -> str:
        v = self.verdict
        lines = [summary_line(v)]
        lines += [f"  - {r}" for r in self.reasons]
        if v.path:
            lines.append("  path:")
            for s in v.path:
                where = f"{s.backend} {s.family} {s.table} {s.chain}"
                pos = f" #{s.position}" if s.position is not None else ""
                comment = f'  ("{s.comment}")' if s.comment else ""
                lines.append(f"    [{s.hook}] {where}{pos}: {s.effect:<14} {s.text}{comment}")
        return "\n".join(lines)


def explain_in_namespace(pkt: Packet, ruleset: Ruleset | None = None,
                         net: NetContext | None = None,
                         evaluator: Evaluator | None = None) -> Explanation:
    """Everything is read in the calling thread's namespace unless given."""
    from fwtop.firewall import load_ruleset
    from fwtop.firewall.routing import net_context
    from fwtop.sources.listeners import listener as find_listener

    if evaluator is None:
        evaluator = Evaluator(ruleset if ruleset is not None else load_ruleset())
    net = net if net is not None else net_context()
    v = evaluator.evaluate(pkt, net)
    info: ListenerInfo | None = None
    checked = False
    final = v.packet or pkt
    if v.verdict == "accept" and "input" in v.hooks and final.proto in ("tcp", "udp") \
            and final.dport is not None:
        checked = True
        found = find_listener(final.proto, final.dport)
        if found is not None:
            info = ListenerInfo(found.pid, found.name)
    return Explanation(v, explain(evaluator, v, info, checked), info)
