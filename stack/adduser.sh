#!/usr/bin/env bash
# Add (or update the password of) a user in a stack, while it runs or not.
#
#   stack/adduser.sh DIR USER PASSWORD
#
# USER is "alice" or "alice@<local mail domain>" (stored as "alice"; lower case).
# Writes DIR/dovecot/users.passwd and DIR/radicale/users atomically; Dovecot and Radicale
# both re-read their file on the next login, no restart needed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$SCRIPT_DIR/common.sh"

[[ $# -eq 3 ]] || { echo "usage: $0 DIR USER PASSWORD" >&2; exit 2; }
STACK_DIR="$(stack_abs_dir "$1")"
[[ -d "$STACK_DIR" ]] || die "$STACK_DIR does not exist; start the stack first: $SCRIPT_DIR/up.sh $1"
PY="${STACK_PYTHON:-$REPO_ROOT/.venv/bin/python}"
command -v "$PY" >/dev/null || PY=python3

name="$("$PY" "$SCRIPT_DIR/stackutil.py" adduser "$STACK_DIR" "$2" "$3")" \
    || die "could not add user '$2' (see the message above)"
log "user '$name' added to $STACK_DIR (Dovecot + Radicale)"
