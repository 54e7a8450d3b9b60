"""Screens on top of the main view: the help screen (`?` / F1)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.reactive import Reactive
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Markdown, Static

HELP = """\
# fwtop: what you are looking at

Run it while traffic is being dropped: it shows, live, which firewall rule or chain policy
is counting the packets.

## The two classic symptoms

* **Connection timed out** = a **DROP** somewhere (or a drop policy): the packet vanished and
  nobody answered. Look for a **red, rising Δ**: a drop/reject rule or a chain header whose
  policy is `drop` with a bold red Δpkt/s is eating the traffic right now.
* **Connection refused** = nothing listens on that port, **or a REJECT rule** answered for it.
  If no reject rule's Δ moves while you retry, the firewall is not the problem: check the service.

Press `s` to put the busiest rules first, then retry the failing connection and watch which
row lights up.

## Panes

* **Packets**: what actually arrives and leaves (AF_PACKET capture, kernel drops and sampling
  counted in the title), each packet coloured by what became of its flow: **unanswered** (a
  SYN, request or ping with no reply: dropped on the way, the "timed out" symptom),
  **refused** (answered by RST: nothing listens, or a REJECT with tcp-reset; the summary says
  which), **rejected** (answered by ICMP unreachable / admin-prohibited), **pmtu** (ICMP
  fragmentation-needed seen). `enter` dissects a packet, `w` writes the list to a pcap.
* **Drops**: every packet the firewall logged or dropped, newest first: NFLOG, kernel LOG lines,
  and on the host the drop-reason tracepoint (policy drops nobody logs). The **rule** column
  names the rule or chain policy that dropped it (a `?` means fwtop is not certain: enter
  says why); the title counts what each source received and lost, and the pane says which
  sources are off and why (e.g. LOG lines of a namespace need `nf_log_all_netns=1`).

* **Header**: host, network namespace (`host` = fwtop's own), the firewall backends found
  (✓ read, – readable but empty, ✗ off: hover the header for the reason), the number of rules,
  and what one poll costs fwtop in CPU. `PAUSED` and `LAB` show when they apply.
* **Rules**: every rule of every backend (nft, iptables-nft, iptables-legacy, firewalld),
  grouped by table and chain. A chain row (cyan) shows the backend, family, table, chain, its
  hook and priority, and its **policy**: the verdict for packets no rule decided, with the
  policy's own counters. Several base chains on one hook all run, lowest priority first; a drop
  anywhere is final.
* **Status line** (bottom): errors from the poller and what is shown.

## Columns

| column | meaning |
|---|---|
| `#` | position in the chain (1 = first) and the nft handle `h…` |
| pkts, bytes | the rule's counters since they were last reset |
| Δpkt/s, Δbyte/s | packets / bytes per second during the last poll (`·` = none) |
| verdict | what the rule does: accept, drop, reject, jump, return, or a target (log, dnat) |
| comment | the rule's comment, shown literally |
| rule | the rule as you would type it |

A bold row matched packets during the last poll: red for drop/reject, green for accept.

## Keys

| key | action |
|---|---|
| `q` | quit |
| `1`, `2`, `tab` | the Drops pane, the Rules pane |
| `enter`, `e` | explain the selected drop: its rule, the path it took, the classic mistake |
| `t` | have the kernel trace the selected drop's flow (nftrace) and compare with fwtop |
| `a` | allow the selected drop's flow for a TTL (the change is shown first); the kernel closes it |
| `r` | temporary rules and pending edits: countdowns, revert, extend, confirm |
| `d` | (Rules pane) delete the selected rule: previewed (diff and impact on recent drops), \
reverted by itself at the deadline unless confirmed |
| `m` | (Rules pane) pick up the selected rule; `m` on another rule of its chain moves it \
right before that one (previewed, reverted unless confirmed); Esc drops it |
| `P` | (Rules pane, on a chain's header row) flip the chain's policy drop ↔ accept |
| `C` | confirm the newest pending edit (it stays; otherwise it reverts at its deadline) |
| `c` | conntrack: how full, how fast, who fills it |
| `p` | pause / resume the display (collection continues; resume shows the newest data) |
| `s` | sort: busiest first (packets per second) / chain order |
| `F5` | refresh now (poll without waiting for the interval) |
| `/` | filter the focused pane: `src 10.0.0.0/8 and dport 443 and not proto udp`, or \
plain words; Enter keeps it, Esc clears it |
| `?`, `F1` | this help |
| ↑ ↓ PgUp PgDn | move in the table; the cursor stays on its rule as counters change |
| `ctrl+p` | command palette (every action above) |

Press Esc, `q` or `?` to close this help.
"""



class MainScreen(Screen[None]):
    """fwtop's main screen. Textual's Screen repaints the whole screen whenever the focus
    moves (its `focused` reactive repaints), which under load costs more than a frame of
    three busy panes: opening or closing a filter box, or switching panes, waited for it.
    Here a focus change repaints only what it restyles (the panes' `:focus-within` borders,
    the cursor rows), which Textual refreshes by itself when it updates their styles."""

    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "dismiss", "Close help", id="help-close"),
    ]

    def __init__(self, backend_notes: list[str] | None = None) -> None:
        super().__init__(id="help")
        self._notes = backend_notes or []

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP, id="help-text")
            if self._notes:
                # Backend reasons come from the system: Static with markup off prints them as-is.
                yield Static("Backends:\n" + "\n".join(f"  {n}" for n in self._notes),
                             id="help-backends", markup=False)


class ExplainScreen(ModalScreen[None]):
    """The full explanation of one drop: verdict, deciding rule, reasons, the path."""

    BINDINGS = [Binding("escape,q,e,t,enter", "dismiss", "Close", id="explain-close")]

    def __init__(self, title: str, verb: str = "Why", initial: str = "evaluating…") -> None:
        super().__init__()
        self._title = title
        self._verb = verb
        self._initial = initial
        self.text = initial

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="explain-body"):
            yield Static(id="explain-text", markup=False)

    def on_mount(self) -> None:
        body = self.query_one("#explain-body")
        body.border_title = f"{self._verb}: {self._title}"
        body.border_subtitle = "esc to close"
        self.query_one("#explain-text", Static).update(self._initial)

    def show(self, text: str) -> None:
        from fwtop.ui.render import safe

        self.text = text
        self.query_one("#explain-text", Static).update(safe(text).replace("\\x0a", "\n"))
