# shellcheck shell=bash
# Shared helpers for stack/*.sh (sourced, not executed).
# Expects STACK_DIR to be set by the caller before the svc_* functions are used.

# shellcheck disable=SC2034  # used by the scripts that source this file
SERVICES=(dovecot smtp radicale postgres)

log() { printf '%s: %s\n' "$(basename "$0")" "$*"; }
warn() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Absolute path of DIR without requiring it to exist; refuse characters that would break the
# generated config files.
stack_abs_dir() {
    local d="$1"
    [[ -n "$d" ]] || die "empty DIR"
    [[ "$d" == /* ]] || d="$PWD/$d"
    # normalise . and .. and duplicate slashes without resolving symlinks
    d="$(realpath -m -s -- "$d")"
    [[ "$d" =~ ^[A-Za-z0-9._/+@=,-]+$ ]] \
        || die "DIR '$d' contains characters the generated configs cannot quote; use letters, digits and ._/+@=,-"
    [[ "$d" != "/" ]] || die "refusing to use / as DIR"
    printf '%s\n' "$d"
}

# Newest PostgreSQL server binary dir, e.g. /usr/lib/postgresql/15/bin
pg_bindir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && best="$d"
    done
    [[ -n "$best" ]] || return 1
    printf '%s\n' "$best"
}

# pid_alive PID: process exists and is not a zombie
pid_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/stat" ]] || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ "$state" != "Z" ]]
}

# cmdline_has PID TEXT: the process' command line mentions TEXT (guards against PID reuse)
cmdline_has() {
    local pid="$1" text="$2"
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$text"
}

# svc_pid NAME: the recorded PID of a service of STACK_DIR ("" if none)
svc_pid() {
    local name="$1" f
    if [[ "$name" == postgres ]]; then
        f="$STACK_DIR/postgres/data/postmaster.pid"
    else
        f="$STACK_DIR/pids/$name.pid"
    fi
    if [[ -r "$f" ]]; then
        head -n1 "$f" 2>/dev/null | tr -dc '0-9' || true
    fi
}

# svc_marker NAME: text that the service's command line contains when it belongs to STACK_DIR
svc_marker() {
    case "$1" in
        dovecot) printf '%s' "$STACK_DIR/dovecot/dovecot.conf" ;;
        smtp) printf '%s' "$STACK_DIR/smtp/relay.json" ;;
        radicale) printf '%s' "$STACK_DIR/radicale/config" ;;
        postgres) printf '%s' "$STACK_DIR/postgres/data" ;;
    esac
}

# svc_running NAME: the recorded PID is alive and is this DIR's server
svc_running() {
    local pid
    pid="$(svc_pid "$1")"
    [[ -n "$pid" ]] && pid_alive "$pid" && cmdline_has "$pid" "$(svc_marker "$1")"
}
