#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432, user postgres)
# are installed and running on this machine, for `make demo` and `make test`.
# Installs them from Debian's packages when missing (needs root); exits non-zero, saying what to do,
# when it cannot.
set -euo pipefail

say() { echo "local-services: $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "$@" >/dev/null 2>&1 || {
    as_root apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "$@" >/dev/null
  }
}
wait_port() { for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done; return 1; }

ensure_postgres() {
  if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      say "installing PostgreSQL"; apt_install postgresql || { say "install PostgreSQL (apt-get install postgresql)"; exit 1; }
    fi
    say "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 30 || { say "PostgreSQL did not start on 127.0.0.1:5432"; exit 1; }
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -w -Atc 'select 1' >/dev/null 2>&1; then
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$hba" ] && [ -w "$hba" ]; then
      say "allowing trust authentication for postgres on 127.0.0.1 (local development only)"
      sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
      as_root pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$(dirname "$hba")")")" main reload
      sleep 1
    fi
    psql -h 127.0.0.1 -U postgres -d postgres -w -Atc 'select 1' >/dev/null || {
      say "cannot log in to PostgreSQL as postgres on 127.0.0.1; set DESKMAIL_DATABASE_URL"; exit 1; }
  fi
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null || { say "installing RabbitMQ"; apt_install rabbitmq-server || {
    say "install RabbitMQ (apt-get install rabbitmq-server)"; exit 1; }; }
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 90 || { say "RabbitMQ did not start on 127.0.0.1:5672"; exit 1; }
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
}

ensure_postgres
ensure_rabbitmq
say "PostgreSQL and RabbitMQ are running"
