#!/bin/sh
# System prerequisites of the test suite, installed once before pytest runs (the README's
# test command calls this): PostgreSQL (the stack test's databases), Chromium (the UI
# screenshots) and docker-compose (validates docker-compose.yml). Each is looked up on PATH
# first (PostgreSQL also in Debian's /usr/lib/postgresql/*/bin); only what is missing is
# installed, with apt-get. Fails with one clear line where it cannot install.
set -eu

have() { command -v "$1" >/dev/null 2>&1; }
debian_initdb() {  # shell only: no external program needed to look
    found=""
    for candidate in /usr/lib/postgresql/*/bin/initdb; do
        if [ -x "$candidate" ]; then found="$candidate"; fi
    done
    [ -n "$found" ]
}

missing=""
if ! have initdb && ! debian_initdb; then missing="$missing postgresql"; fi
have chromium || missing="$missing chromium"
have docker-compose || missing="$missing docker-compose"
[ -z "$missing" ] && exit 0

if ! have apt-get; then
    echo "error: the tests need$missing; install them with your package manager (no apt-get here)" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif have sudo && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "error: the tests need$missing; installing them needs root: run 'sudo $0' once" >&2
    exit 1
fi
echo "installing the tests' system prerequisites:$missing" >&2
log=$(mktemp)
# shellcheck disable=SC2086 # the package list is meant to split
if ! DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -q $missing >"$log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive $as_root apt-get update -q >>"$log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -q $missing >>"$log" 2>&1; then
        echo "error: apt-get could not install$missing (log: $log)" >&2
        exit 1
    fi
fi
rm -f "$log"
