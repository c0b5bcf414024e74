#!/usr/bin/env bash
# Start the real-server test stack in DIR (idempotent), all on 127.0.0.1:
#   Dovecot (IMAP + LMTP), SMTP relay (aiosmtpd -> LMTP / outbox), Radicale, PostgreSQL.
#
#   stack/up.sh DIR          e.g. stack/up.sh .stack/demo
#
# Environment (all optional):
#   CRMSYNC_STACK_IMAP_PORT, CRMSYNC_STACK_LMTP_PORT, CRMSYNC_STACK_SMTP_PORT,
#   CRMSYNC_STACK_RADICALE_PORT, CRMSYNC_STACK_PG_PORT   fixed ports (default: the ports DIR
#                                  used last time if still free, else free ones)
#   CRMSYNC_STACK_MAIL_DOMAINS   local mail domains, space separated
#                                  (default "example.test demo.crmsync.test")
#   STACK_USERS_FILE             file of "username:password" lines added to Dovecot and Radicale
#   STACK_PYTHON                 Python with radicale + aiosmtpd (default REPO/.venv/bin/python)
#
# Writes DIR/stack.env and DIR/stack.json.  Stop with stack/down.sh DIR.
set -euo pipefail
umask 022

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$SCRIPT_DIR/common.sh"

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
[[ "$(id -u)" == "0" ]] || die "run as root (Dovecot drops to 'nobody', PostgreSQL runs as 'postgres')"

T0=$(date +%s%N)
STACK_DIR="$(stack_abs_dir "$1")"
# Relative paths in the environment mean the caller's directory, not STACK_DIR (we cd below).
if [[ -n "${STACK_USERS_FILE:-}" && "$STACK_USERS_FILE" != /* ]]; then
    STACK_USERS_FILE="$PWD/$STACK_USERS_FILE"
fi
mkdir -p "$STACK_DIR"
cd "$STACK_DIR"

PY="${STACK_PYTHON:-$REPO_ROOT/.venv/bin/python}"
UTIL=("$PY" "$SCRIPT_DIR/stackutil.py")
read -r -a DOMAINS <<<"${CRMSYNC_STACK_MAIL_DOMAINS:-example.test demo.crmsync.test}"
((${#DOMAINS[@]} > 0)) || die "CRMSYNC_STACK_MAIL_DOMAINS is empty"
for d in "${DOMAINS[@]}"; do
    [[ "$d" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || die "invalid mail domain '$d' (lower case letters, digits, . and -)"
done
MAIL_DOMAINS="${DOMAINS[*]}"

# ---------------------------------------------------------------- prerequisites
[[ -x "$PY" ]] || die "no Python at $PY; create the venv (python3 -m venv $REPO_ROOT/.venv) and pip install -e '${REPO_ROOT}[dev]', or set STACK_PYTHON"
"$PY" -c 'import radicale, aiosmtpd' 2>/dev/null \
    || die "$PY cannot import radicale and aiosmtpd; run: $PY -m pip install -e '${REPO_ROOT}[dev]'"
command -v dovecot >/dev/null || die "dovecot is not installed; run: $SCRIPT_DIR/install.sh"
[[ -x /usr/lib/dovecot/lmtp ]] || die "dovecot-lmtpd is not installed; run: $SCRIPT_DIR/install.sh"
PG_BIN="$(pg_bindir)" || die "PostgreSQL server binaries not found; run: $SCRIPT_DIR/install.sh"
for tool in runuser setsid flock; do
    command -v "$tool" >/dev/null || die "'$tool' (util-linux) is missing"
done

# ---------------------------------------------------------------- lock + idempotency
exec 9>"$STACK_DIR/.lock"
flock -w 60 9 || die "another up.sh/down.sh holds $STACK_DIR/.lock for more than 60 s"

running=()
for svc in "${SERVICES[@]}"; do
    if svc_running "$svc"; then running+=("$svc"); fi
done
if ((${#running[@]} == ${#SERVICES[@]})) && [[ -f "$STACK_DIR/stack.json" ]]; then
    log "stack in $STACK_DIR is already running (${running[*]}); nothing to do"
    log "settings: $STACK_DIR/stack.env"
    exit 0
fi
if ((${#running[@]} > 0)); then
    log "stack in $STACK_DIR is partly running (${running[*]}); stopping it first"
    STACK_LOCK_HELD=1 "$SCRIPT_DIR/down.sh" "$STACK_DIR"
fi

# ---------------------------------------------------------------- layout, users, ports
rm -f "$STACK_DIR/started-by-pytest"   # tests/stackfix marks stacks a test run started
mkdir -p pids dovecot/{state,log,mail} smtp/{outbox,log} radicale/{collections,log} \
    postgres/{data,run,log}
printf '%s\n' "${DOMAINS[@]}" > domains
"${UTIL[@]}" ensure-user-files "$STACK_DIR"
"${UTIL[@]}" ensure-probe-user "$STACK_DIR"
if [[ -n "${STACK_USERS_FILE:-}" ]]; then
    [[ -r "$STACK_USERS_FILE" ]] || die "STACK_USERS_FILE=$STACK_USERS_FILE is not readable"
    n=$("${UTIL[@]}" seed "$STACK_DIR" "$STACK_USERS_FILE" | wc -l) \
        || die "could not add the users of $STACK_USERS_FILE (see the message above)"
    log "added/updated $n user(s) from $STACK_USERS_FILE"
fi

chown nobody:nogroup dovecot/mail
chown postgres:postgres postgres/data postgres/run postgres/log
chmod 700 postgres/data
runuser -u nobody -- test -w "$STACK_DIR/dovecot/mail" \
    || die "user 'nobody' cannot reach $STACK_DIR/dovecot/mail; every parent directory of $STACK_DIR needs o+x (or pick another DIR)"
runuser -u postgres -- test -w "$STACK_DIR/postgres/data" \
    || die "user 'postgres' cannot reach $STACK_DIR/postgres/data; every parent directory of $STACK_DIR needs o+x (or pick another DIR)"

port_specs=()
for name in imap lmtp smtp radicale postgres; do
    var="CRMSYNC_STACK_${name^^}_PORT"
    [[ $name == postgres ]] && var=CRMSYNC_STACK_PG_PORT
    port_specs+=("$name=${!var:-}")
done
ports_out="$("${UTIL[@]}" pick-ports "$STACK_DIR" "${port_specs[@]}")" \
    || die "could not pick ports (see the message above); unset or change CRMSYNC_STACK_*_PORT"
declare -A PORT
while IFS='=' read -r k v; do PORT[$k]=$v; done <<<"$ports_out"

# ---------------------------------------------------------------- Dovecot
# Fresh base_dir per run: an old master that is still exiting cannot block the new one.
# Unix socket paths are limited to 108 bytes, so a long DIR gets its base_dir under /tmp.
rm -rf dovecot/run.* 2>/dev/null || true
if [[ -f dovecot/base_dir ]]; then
    old_base="$(cat dovecot/base_dir)"
    [[ "$old_base" == /tmp/crmsync-dovecot.* ]] && rm -rf "$old_base"
fi
base_dir="$STACK_DIR/dovecot/run.$(date +%s)"
if ((${#base_dir} > 70)); then
    base_dir="$(mktemp -d /tmp/crmsync-dovecot.XXXXXX)"
fi
mkdir -p "$base_dir"
echo "$base_dir" > dovecot/base_dir

cat > dovecot/dovecot.conf <<EOF
# Generated by stack/up.sh for $STACK_DIR; do not edit (rewritten on every start).
# Standalone Dovecot 2.3 config for tests: no conf.d, loopback only.
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $base_dir/
state_dir = $STACK_DIR/dovecot/state
log_path = $STACK_DIR/dovecot/log/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
# Failed logins answer in ~0.5 s instead of 2 s.  This does NOT remove Dovecot's per-IP auth
# penalty: after a failure, the next LOGIN from the same IP waits ~4 s.  Tests that use
# wrong passwords must connect from another source address (127.0.0.2).
auth_failure_delay = 0
# "Alice@example.test" and "alice" are the same user "alice" (IMAP login and LMTP delivery).
auth_username_format = %Ln
mail_location = maildir:~/Maildir
# Tests hold several connections per user (default 10).
mail_max_userip_connections = 100
# Test data: speed over durability.
mail_fsync = never
# IDLE falls back to polling when inotify runs out (128 instances per uid, all users are nobody).
mailbox_idle_check_interval = 1 secs

# Users: stack/stackutil.py keeps users.passwd (passwd-file format; read by the SMTP relay)
# and users.dict (the same users as a dict file) in step.  Dovecot reads the dict file:
# its passwd-file driver re-checks the file at most once per second, so a user added right
# after another login would be "unknown" for up to a second; dict-file re-reads on every
# change of the file's inode (stackutil replaces the file atomically).
passdb {
  driver = dict
  args = $STACK_DIR/dovecot/dict-auth.conf
}
userdb {
  driver = dict
  args = $STACK_DIR/dovecot/dict-auth.conf
  default_fields = uid=nobody gid=nogroup home=$STACK_DIR/dovecot/mail/%u
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${PORT[imap]}
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = ${PORT[lmtp]}
  }
}
EOF
cat > dovecot/dict-auth.conf <<EOF
# Generated by stack/up.sh: passdb/userdb lookups in users.dict (see dovecot.conf).
uri = file:$STACK_DIR/dovecot/users.dict
iterate_disable = yes
default_pass_scheme = PLAIN
key passdb {
  key = passdb/%u
  format = json
}
key userdb {
  key = userdb/%u
  format = json
}
passdb_objects = passdb
userdb_objects = userdb
EOF
doveconf -c dovecot/dovecot.conf -n > /dev/null 2> dovecot/log/doveconf.err \
    || die "invalid Dovecot config $STACK_DIR/dovecot/dovecot.conf: $(cat dovecot/log/doveconf.err)"

setsid dovecot -F -c "$STACK_DIR/dovecot/dovecot.conf" \
    < /dev/null >> dovecot/log/stdout.log 2>&1 9>&- &
echo $! > pids/dovecot.pid

# ---------------------------------------------------------------- Radicale
cat > radicale/config <<EOF
# Generated by stack/up.sh for $STACK_DIR; do not edit (rewritten on every start).
[server]
hosts = 127.0.0.1:${PORT[radicale]}
max_connections = 64

[auth]
type = htpasswd
htpasswd_filename = $STACK_DIR/radicale/users
htpasswd_encryption = plain
# Read the file on every login (the default in 3.9; explicit because tests add users while
# Radicale runs).  With htpasswd_cache = True it would re-read only on mtime/size change.
htpasswd_cache = False
# No sleep after a failed login or a 401 challenge (default 1 s, randomized).
delay = 0
# Same user names as Dovecot: "Alice@example.test" -> "alice".
lc_username = True
strip_domain = True

[rights]
type = owner_only

[storage]
filesystem_folder = $STACK_DIR/radicale/collections

[web]
type = none

[logging]
level = warning
mask_passwords = True
EOF

setsid env -u RADICALE_CONFIG HOME="$STACK_DIR/radicale" \
    "$PY" -m radicale --config "$STACK_DIR/radicale/config" \
    < /dev/null >> radicale/log/radicale.log 2>&1 9>&- &
echo $! > pids/radicale.pid

# ---------------------------------------------------------------- SMTP relay
cat > smtp/relay.json <<EOF
{
  "host": "127.0.0.1",
  "port": ${PORT[smtp]},
  "lmtp_host": "127.0.0.1",
  "lmtp_port": ${PORT[lmtp]},
  "passwd_file": "$STACK_DIR/dovecot/users.passwd",
  "domains": [$(printf '"%s",' "${DOMAINS[@]}" | sed 's/,$//')],
  "outbox": "$STACK_DIR/smtp/outbox",
  "log_file": "$STACK_DIR/smtp/log/relay.log"
}
EOF
setsid "$PY" "$SCRIPT_DIR/smtp_relay.py" --config "$STACK_DIR/smtp/relay.json" \
    < /dev/null >> smtp/log/stdout.log 2>&1 9>&- &
echo $! > pids/smtp.pid

# ---------------------------------------------------------------- PostgreSQL
PGDATA="$STACK_DIR/postgres/data"
if [[ -s "$PGDATA/PG_VERSION" ]]; then
    have="$(cat "$PGDATA/PG_VERSION")"
    want="$(basename "$(dirname "$PG_BIN")")"
    [[ "$have" == "$want" ]] \
        || die "$PGDATA was made by PostgreSQL $have but $PG_BIN is $want; remove $STACK_DIR/postgres and retry"
else
    rm -rf "${PGDATA:?}"/* 2>/dev/null || true
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync \
        -E UTF8 --locale=C.UTF-8 > postgres/log/initdb.log 2>&1 \
        || { STACK_LOCK_HELD=1 "$SCRIPT_DIR/down.sh" "$STACK_DIR" >/dev/null 2>&1 || true;
             die "initdb failed, see $STACK_DIR/postgres/log/initdb.log"; }
    echo "include = 'stack.conf'" >> "$PGDATA/postgresql.conf"
fi
# No postgres of this DIR is running (checked above), so a postmaster.pid left by a crash or
# a reboot is stale; its PID may now belong to another process, which would make PostgreSQL
# refuse to start ("lock file already exists").
rm -f "$PGDATA/postmaster.pid"
sock_dir="$STACK_DIR/postgres/run"
((${#sock_dir} > 90)) && sock_dir=""   # socket path limit; TCP is what clients use anyway
cat > "$PGDATA/stack.conf" <<EOF
# Generated by stack/up.sh; rewritten on every start.
listen_addresses = '127.0.0.1'
port = ${PORT[postgres]}
unix_socket_directories = '$sock_dir'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
chown postgres:postgres "$PGDATA/stack.conf"
if ! runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$STACK_DIR/postgres/log/postgres.log" \
        -w -t 20 start > postgres/log/pg_ctl.log 2>&1 9>&-; then
    STACK_LOCK_HELD=1 "$SCRIPT_DIR/down.sh" "$STACK_DIR" >/dev/null 2>&1 || true
    die "PostgreSQL failed to start, see $STACK_DIR/postgres/log/postgres.log and $STACK_DIR/postgres/log/pg_ctl.log"
fi

# ---------------------------------------------------------------- readiness
PG_PID="$(head -n1 "$PGDATA/postmaster.pid")"
if ! failed="$("${UTIL[@]}" wait-ready 10 \
        "dovecot-imap:imap:${PORT[imap]}:$(cat pids/dovecot.pid):stack-probe:$STACK_DIR/dovecot/probe.secret" \
        "dovecot-lmtp:tcp:${PORT[lmtp]}:$(cat pids/dovecot.pid)" \
        "smtp:tcp:${PORT[smtp]}:$(cat pids/smtp.pid)" \
        "radicale:tcp:${PORT[radicale]}:$(cat pids/radicale.pid)" \
        "postgres:tcp:${PORT[postgres]}:$PG_PID")"; then
    while IFS= read -r item; do
        [[ -n "$item" ]] || continue
        case "$item" in
            dovecot*) warn "dovecot failed to start: $item; see $STACK_DIR/dovecot/log/dovecot.log and $STACK_DIR/dovecot/log/stdout.log" ;;
            smtp*) warn "SMTP relay failed to start: $item; see $STACK_DIR/smtp/log/stdout.log and $STACK_DIR/smtp/log/relay.log" ;;
            radicale*) warn "Radicale failed to start: $item; see $STACK_DIR/radicale/log/radicale.log" ;;
            postgres*) warn "PostgreSQL is not accepting connections: $item; see $STACK_DIR/postgres/log/postgres.log" ;;
            *) warn "$item" ;;
        esac
    done <<<"$failed"
    STACK_LOCK_HELD=1 "$SCRIPT_DIR/down.sh" "$STACK_DIR" >/dev/null 2>&1 || true
    die "stack did not start; everything started in $STACK_DIR was stopped again"
fi

# ---------------------------------------------------------------- stack.json / stack.env
DOVECOT_PID="$(cat pids/dovecot.pid)"
SMTP_PID="$(cat pids/smtp.pid)"
RADICALE_PID="$(cat pids/radicale.pid)"
export STACKINFO_DIR="$STACK_DIR" STACKINFO_HOST=127.0.0.1 \
    STACKINFO_IMAP_PORT="${PORT[imap]}" STACKINFO_LMTP_PORT="${PORT[lmtp]}" \
    STACKINFO_SMTP_PORT="${PORT[smtp]}" STACKINFO_RADICALE_PORT="${PORT[radicale]}" \
    STACKINFO_RADICALE_URL="http://127.0.0.1:${PORT[radicale]}/" \
    STACKINFO_PG_PORT="${PORT[postgres]}" \
    STACKINFO_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:${PORT[postgres]}/postgres" \
    STACKINFO_POSTGRES_DSN="postgresql://postgres@127.0.0.1:${PORT[postgres]}/postgres" \
    STACKINFO_DOVECOT_PASSWD="$STACK_DIR/dovecot/users.passwd" \
    STACKINFO_RADICALE_HTPASSWD="$STACK_DIR/radicale/users" \
    STACKINFO_MAIL_DOMAINS="$MAIL_DOMAINS" \
    STACKINFO_OUTBOX_DIR="$STACK_DIR/smtp/outbox" \
    STACKINFO_MAILDIR_ROOT="$STACK_DIR/dovecot/mail" \
    STACKINFO_SMTP_LOG="$STACK_DIR/smtp/log/relay.log" \
    STACKINFO_DOVECOT_LOG="$STACK_DIR/dovecot/log/dovecot.log" \
    STACKINFO_RADICALE_LOG="$STACK_DIR/radicale/log/radicale.log" \
    STACKINFO_POSTGRES_LOG="$STACK_DIR/postgres/log/postgres.log" \
    STACKINFO_DOVECOT_PID="$DOVECOT_PID" STACKINFO_SMTP_PID="$SMTP_PID" \
    STACKINFO_RADICALE_PID="$RADICALE_PID" STACKINFO_POSTGRES_PID="$PG_PID"
"${UTIL[@]}" write-info "$STACK_DIR"

ms=$((($(date +%s%N) - T0) / 1000000))
log "stack up in $STACK_DIR (${ms} ms)"
log "  IMAP     127.0.0.1:${PORT[imap]}   LMTP 127.0.0.1:${PORT[lmtp]}   SMTP 127.0.0.1:${PORT[smtp]}"
log "  CalDAV   http://127.0.0.1:${PORT[radicale]}/"
log "  Postgres postgresql+psycopg://postgres@127.0.0.1:${PORT[postgres]}/postgres"
log "  domains  $MAIL_DOMAINS;  settings: $STACK_DIR/stack.env, $STACK_DIR/stack.json"
