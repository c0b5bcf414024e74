#!/usr/bin/env bash
# Stop everything stack/up.sh started in DIR (idempotent).
#
#   stack/down.sh DIR
#
# Only the PIDs recorded in DIR are signalled, and only after checking that their command
# line points into DIR.  SIGTERM (PostgreSQL: pg_ctl stop -m fast), wait up to
# STACK_STOP_TIMEOUT seconds (default 10), then SIGKILL the process group of what is left.
# Data (mail, collections, database, users) stays in DIR; rm -rf DIR for a clean slate.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$SCRIPT_DIR/common.sh"

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
STACK_DIR="$(stack_abs_dir "$1")"
if [[ ! -d "$STACK_DIR" ]]; then
    log "nothing to stop: $STACK_DIR does not exist"
    exit 0
fi
T0=$(date +%s%N)
TIMEOUT="${STACK_STOP_TIMEOUT:-10}"

if [[ -z "${STACK_LOCK_HELD:-}" ]]; then
    exec 9>"$STACK_DIR/.lock"
    flock -w 60 9 || die "another up.sh/down.sh holds $STACK_DIR/.lock for more than 60 s"
fi

# group_members PGID: PIDs of live processes in process group PGID
group_members() {
    local pgid="$1" stat rest f state _ppid pgrp _
    for f in /proc/[0-9]*/stat; do
        stat="$(cat "$f" 2>/dev/null)" || continue
        rest="${stat##*) }"            # fields from 3 on: state ppid pgrp ...
        read -r state _ppid pgrp _ <<<"$rest"
        if [[ "$pgrp" == "$pgid" && "$state" != "Z" ]]; then   # zombies await reaping by init
            f="${f#/proc/}"
            printf '%s\n' "${f%/stat}"
        fi
    done
}

declare -A PIDS=()
pg_job=""
if svc_running postgres; then
    PIDS[postgres]="$(svc_pid postgres)"
    if PG_BIN="$(pg_bindir)"; then
        mkdir -p "$STACK_DIR/postgres/log"
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STACK_DIR/postgres/data" -m fast -w \
            -t "$TIMEOUT" stop >> "$STACK_DIR/postgres/log/pg_ctl.log" 2>&1 &
        pg_job=$!
    else
        kill -INT "${PIDS[postgres]}" 2>/dev/null || true   # SIGINT = fast shutdown
    fi
fi
for svc in dovecot smtp radicale; do
    if svc_running "$svc"; then
        PIDS[$svc]="$(svc_pid "$svc")"
        kill -TERM "${PIDS[$svc]}" 2>/dev/null || true
    fi
done

if ((${#PIDS[@]} == 0)); then
    log "nothing running in $STACK_DIR"
else
    log "stopping ${!PIDS[*]} in $STACK_DIR"
    deadline=$(($(date +%s%N) + TIMEOUT * 1000000000))
    while :; do
        alive=()
        for svc in "${!PIDS[@]}"; do
            pid_alive "${PIDS[$svc]}" && alive+=("$svc")
        done
        ((${#alive[@]} == 0)) && break
        (($(date +%s%N) > deadline)) && break
        sleep 0.05
    done
    for svc in "${alive[@]}"; do
        warn "$svc (pid ${PIDS[$svc]}) did not stop within ${TIMEOUT}s; sending SIGKILL to its process group"
        kill -KILL -- "-${PIDS[$svc]}" 2>/dev/null || kill -KILL "${PIDS[$svc]}" 2>/dev/null || true
    done
    if [[ -n "$pg_job" ]]; then wait "$pg_job" || true; fi
    # Children left behind in a server's own process group (each server is started with
    # setsid, so the group holds nothing else).
    for svc in "${!PIDS[@]}"; do
        mapfile -t left < <(group_members "${PIDS[$svc]}")
        if ((${#left[@]} > 0)); then
            warn "$svc left ${#left[@]} process(es) behind (${left[*]}); sending SIGKILL"
            kill -KILL "${left[@]}" 2>/dev/null || true
        fi
    done
fi

rm -f "$STACK_DIR"/pids/*.pid "$STACK_DIR/started-by-pytest"
if [[ -f "$STACK_DIR/dovecot/base_dir" ]]; then
    base="$(cat "$STACK_DIR/dovecot/base_dir")"
    [[ "$base" == /tmp/crmsync-dovecot.* ]] && rm -rf "$base"
fi
if ((${#PIDS[@]} > 0)); then
    log "stopped ${!PIDS[*]} in $((($(date +%s%N) - T0) / 1000000)) ms"
fi
