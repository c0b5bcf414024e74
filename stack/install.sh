#!/usr/bin/env bash
# Install the Debian packages the real-server test stack needs (idempotent).
#
#   sudo stack/install.sh
#
# Installs only what is missing: dovecot-imapd dovecot-lmtpd postgresql, and isync (mbsync,
# the baseline of bench/incoming_bench.py).
# Runs `apt-get update` once, and only when something must be installed.
# No system service is started or used: stack/up.sh runs its own servers.
set -euo pipefail

PACKAGES=(dovecot-imapd dovecot-lmtpd postgresql isync)

log() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: ERROR: %s\n' "$*" >&2; exit 1; }

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"

missing=()
for pkg in "${PACKAGES[@]}"; do
    if is_installed "$pkg"; then
        log "already installed: $pkg"
    else
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    [[ "$(id -u)" == "0" ]] || die "missing packages (${missing[*]}); run this script as root (e.g. sudo $0)"
    export DEBIAN_FRONTEND=noninteractive
    log "installing: ${missing[*]}"
    log "running apt-get update"
    apt-get update -q || die "apt-get update failed; check the network/apt sources and re-run $0"
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed; see the apt output above and re-run $0"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "$pkg still not installed after apt-get install"
        log "installed: $pkg"
    done
else
    log "nothing to install"
fi

# Sanity checks of what up.sh needs from the packages.
PG_BIN=""
for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && PG_BIN="$d"
done
[[ -n "$PG_BIN" ]] || die "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin"
command -v dovecot >/dev/null 2>&1 || die "dovecot binary not found after install"
for u in dovecot dovenull postgres nobody; do
    id "$u" >/dev/null 2>&1 || die "system user '$u' is missing (created by the packages); reinstall them"
done
log "ok: dovecot $(dovecot --version | cut -d' ' -f1), PostgreSQL binaries in $PG_BIN"

# The Python side (Radicale, aiosmtpd) comes from the project's venv, not from apt.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${STACK_PYTHON:-$REPO_ROOT/.venv/bin/python}"
if [[ -x "$PY" ]] && "$PY" -c 'import radicale, aiosmtpd' >/dev/null 2>&1; then
    log "ok: $PY has radicale and aiosmtpd"
else
    log "note: $PY lacks radicale/aiosmtpd; create the venv and run: $REPO_ROOT/.venv/bin/pip install -e '${REPO_ROOT}[dev]'"
fi
