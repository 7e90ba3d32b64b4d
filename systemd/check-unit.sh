#!/usr/bin/env bash
# Checks systemd/dropzone.service without a running systemd (CI, containers):
#   1. systemd-analyze verify, in a throw-away root holding the unit, systemd's own
#      units, and stand-ins for the binaries the unit runs (verify refuses a unit whose
#      ExecStart= is missing, and dropzone is not installed at /opt/dropzone here).
#      verify exits 0 on unknown keys and bad values (it only warns), so any output fails.
#   2. systemd-analyze security --offline: overall exposure must be at most 2.0.
#   3. systemd-sysusers --dry-run on systemd/dropzone.sysusers.conf.
# Installs Debian's systemd package when systemd-analyze is missing. Non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"

MAX_EXPOSURE=20  # tenths: 2.0
UNIT=dropzone.service

if ! command -v systemd-analyze >/dev/null; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
systemd-analyze --version | head -n 1

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# A root with systemd's units (for the targets the unit orders itself after) and every
# absolute command of the unit's Exec*= lines as a stand-in executable.
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
unit_dir=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /usr/lib/systemd/system)
cp -r "$unit_dir" "$root/usr/lib/systemd/system"
cp "$UNIT" "$root/etc/systemd/system/$UNIT"
sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^ ]*\).*/\1/p' "$UNIT" | sort -u | while read -r cmd; do
    mkdir -p "$root$(dirname "$cmd")"
    printf '#!/bin/sh\nexit 0\n' >"$root$cmd"
    chmod 0755 "$root$cmd"
done

echo "== systemd-analyze verify $UNIT"
verify_out=$(systemd-analyze verify --man=no --root="$root" "/etc/systemd/system/$UNIT" 2>&1) || {
    printf '%s\n' "$verify_out"
    echo "verify failed" >&2
    exit 1
}
if [ -n "$verify_out" ]; then
    printf '%s\n' "$verify_out"
    echo "verify printed warnings: treat them as errors" >&2
    exit 1
fi
echo "verify: OK"

echo "== systemd-analyze security --offline=yes $UNIT"
security_out=$(systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE" --no-pager "$UNIT" 2>&1) && ok=1 || ok=0
printf '%s\n' "$security_out" | grep -E '^✗|Overall exposure' || true
if [ "$ok" -ne 1 ]; then
    echo "security: exposure above 2.0 (or the check failed)" >&2
    exit 1
fi

echo "== systemd-sysusers --dry-run dropzone.sysusers.conf"
# With --root, sysusers reads its configuration from inside the root.
mkdir -p "$root/etc/sysusers.d"
cp dropzone.sysusers.conf "$root/etc/sysusers.d/dropzone.conf"
systemd-sysusers --root="$root" --dry-run 2>&1

echo "unit checks: OK"
