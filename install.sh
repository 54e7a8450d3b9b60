#!/usr/bin/env bash
# Install fwtop and everything it needs on Debian/Ubuntu, as root:
#   ./install.sh          kernel tools, a venv in .venv, `fwtop` on PATH (/usr/local/bin)
#   ./install.sh --dev    the same plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (fwtop reads and, on request, edits the kernel's firewall)" >&2
  exit 1
fi
dev=0
[ "${1:-}" = "--dev" ] && dev=1

# Kernel-side tools: nft/libnftables, iptables (nft and legacy), conntrack, tcpdump, iproute2.
# python3-dev and gcc build python-iptables' small C helper.
packages=(python3 python3-venv python3-dev gcc libc6-dev nftables libnftables1 iptables
          conntrack iproute2 tcpdump procps util-linux kmod)
# --dev: what the confined firewalld of the tests runs on (libraries and the bare dbus-daemon
# binary; none of them starts a service). firewalld itself is extracted below, never installed.
[ "$dev" = 1 ] && packages+=(dbus-daemon dbus-bin python3-dbus python3-gi
                          gir1.2-glib-2.0)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Prefer the interpreter on PATH (which may be newer than Debian's); it must be 3.11+.
py=python3
if ! "$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "install.sh: fwtop needs Python 3.11 or newer" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
  rm -rf .venv
  "$py" -m venv .venv
fi
extra=""
[ "$dev" = 1 ] && extra="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}" 2>&1 \
  | grep -v -e "^WARNING: Location" -e "is ignored" || true
.venv/bin/python -c 'import fwtop.cli, textual, iptc' \
  || { echo "install.sh: the Python install did not complete" >&2; exit 1; }

# The drop-reason source (skb:kfree_skb) reads tracefs; mount it where the kernel has it but
# nothing mounted it (minimal VMs). Mounting it changes no rule, sysctl or interface.
if [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    && echo "mounted tracefs at /sys/kernel/tracing (for the drop-reason tracepoint)" || true
fi

# promtool checks docs/alerts (--dev): taken out of Debian's prometheus package without
# installing it, so no Prometheus daemon is set up or started.
if [ "$dev" = 1 ] && ! command -v promtool >/dev/null && [ ! -x .venv/bin/promtool ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null \
        && dpkg-deb -x prometheus_*.deb root) && [ -x "$tmp/root/usr/bin/promtool" ]; then
    cp "$tmp/root/usr/bin/promtool" .venv/bin/promtool
  else
    echo "install.sh: warning: could not get promtool (Debian package prometheus)" >&2
  fi
  rm -rf "$tmp"
fi

# firewalld for the tests (--dev), confined by them to a throwaway namespace with a private
# D-Bus bus: Debian's firewalld, python3-firewall and python3-nftables unpacked into
# /opt/fwtop-firewalld/root, NOT installed (firewalld's postinst enables and starts the service,
# which would take over this machine's firewall). Nothing here starts it.
fwd_root=/opt/fwtop-firewalld/root
fwd_pkgs=(firewalld python3-firewall python3-nftables)
if [ "$dev" = 1 ]; then
  want=$(apt-cache policy firewalld 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ ! -x "$fwd_root/usr/sbin/firewalld" ] && { [ -z "$want" ] || [ "$want" = "(none)" ]; }; then
    apt-get update -qq  # no package lists yet (a fresh container)
    want=$(apt-cache policy firewalld 2>/dev/null | awk '/Candidate:/ {print $2}')
  fi
  have=$(cat "$fwd_root/.version" 2>/dev/null || true)
  if [ -n "$want" ] && [ "$want" != "(none)" ] && [ "$want" != "$have" ]; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && apt-get download -qq "${fwd_pkgs[@]}" 2>/dev/null); then
      rm -rf "$fwd_root.new" && mkdir -p "$fwd_root.new"
      for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$fwd_root.new"; done
      echo "$want" > "$fwd_root.new/.version"
      rm -rf "$fwd_root" && mv "$fwd_root.new" "$fwd_root"
      echo "firewalld $want unpacked in $fwd_root (for the tests; not installed, not started)"
    else
      echo "install.sh: warning: could not download firewalld for the tests" >&2
    fi
    rm -rf "$tmp"
  elif [ ! -x "$fwd_root/usr/sbin/firewalld" ]; then
    echo "install.sh: warning: no firewalld package available for the tests" >&2
  fi
fi

ln -sf "$PWD/.venv/bin/fwtop" /usr/local/bin/fwtop
echo "fwtop installed: $(command -v fwtop)"
