#!/usr/bin/env bash
# Make Postfix's smtp-sink benchmark server available without leaving a Postfix
# daemon running. Debian/Ubuntu only; needs root for the install. Idempotent:
# exits 0 at once when smtp-sink is already on PATH or in /usr/sbin.
set -euo pipefail

readonly SINK=/usr/sbin/smtp-sink
readonly POLICY=/usr/sbin/policy-rc.d
readonly MASTER=/usr/lib/postfix/sbin/master

log() { printf 'install-smtp-sink: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

already_installed() {
    command -v smtp-sink >/dev/null 2>&1 || [ -x "$SINK" ]
}

check_prerequisites() {
    [ "$(id -u)" -eq 0 ] || die "run as root (or via sudo): apt-get must install the postfix package"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install Postfix (which ships smtp-sink) with your system's package manager"
    command -v debconf-set-selections >/dev/null 2>&1 || die "debconf-set-selections not found: install the debconf package first"
}

# Postfix conflicts with other MTAs (exim4, ...): apt would remove them silently with -y.
refuse_removals() {
    local removals
    removals=$(apt-get install -s --no-install-recommends postfix 2>/dev/null | awk '/^Remv /{print $2}' || true)
    [ -z "$removals" ] || die "installing postfix would remove: ${removals//$'\n'/ }; install smtp-sink by hand"
}

# A policy-rc.d answering 101 keeps invoke-rc.d from starting the daemon during the install.
forbid_service_start() {
    if [ -e "$POLICY" ]; then
        return
    fi
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
}

install_postfix() {
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Another install holding the dpkg lock (a CI step, unattended upgrades) is waited for.
    local install=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends postfix)
    if ! DEBIAN_FRONTEND=noninteractive "${install[@]}"; then
        log "install failed; refreshing package lists and trying once more"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update
        refuse_removals
        DEBIAN_FRONTEND=noninteractive "${install[@]}"
    fi
}

master_pids() {
    pgrep -f "^$MASTER( |$)" || true
}

# Whatever started it (systemd, an init script), no Postfix daemon may stay up.
stop_postfix_daemon() {
    if command -v systemctl >/dev/null 2>&1; then
        # disable works offline (symlinks only); stop needs a running systemd
        systemctl disable postfix.service >/dev/null 2>&1 || true
        [ ! -d /run/systemd/system ] || systemctl stop postfix.service >/dev/null 2>&1 || true
    fi
    local pids
    pids=$(master_pids)
    [ -n "$pids" ] || return 0
    log "stopping the postfix master the package started (pid ${pids//$'\n'/ })"
    postfix stop >/dev/null 2>&1 || kill $pids
    for _ in $(seq 1 20); do
        [ -n "$(master_pids)" ] || return 0
        sleep 0.5
    done
    die "a postfix master is still running (pid $(master_pids | tr '\n' ' ')); stop it by hand"
}

main() {
    if already_installed; then
        log "smtp-sink already available: $(command -v smtp-sink || echo "$SINK")"
        exit 0
    fi
    check_prerequisites
    refuse_removals
    forbid_service_start
    install_postfix
    stop_postfix_daemon
    [ -x "$SINK" ] || die "postfix installed but $SINK is missing"
    log "smtp-sink installed at $SINK"
}

main "$@"
