#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are on this machine, for the
# tests and the demo: consumer/devenv/postgres.py starts a throwaway server from them; nothing
# is started here. Installs Debian's `postgresql` package with apt-get only when no initdb is
# found. Idempotent: CI runs it before every test run. Skip it by setting
# ORDER_CONSUMER_POSTGRES_URL to an existing server instead.
set -euo pipefail

find_initdb() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 || true
  command -v initdb || true
}

found="$(find_initdb)"; found="${found%%$'\n'*}"
if [[ -n "$found" ]]; then
  echo "PostgreSQL server binaries present: $(dirname "$found")"
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "No PostgreSQL server binaries and no apt-get: install a PostgreSQL server (13 or newer)" \
       "with this system's package manager, or set ORDER_CONSUMER_POSTGRES_URL." >&2
  exit 1
fi
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "Installing Debian's postgresql package (no initdb found)…"
"${sudo[@]}" apt-get update -qq
# postgresql-common first, to turn off the default cluster: the package would otherwise create
# and start one on port 5432 that nothing here uses.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
conf=/etc/postgresql-common/createcluster.conf
if [[ -f "$conf" ]]; then
  "${sudo[@]}" sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
fi
"${sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null

found="$(find_initdb)"; found="${found%%$'\n'*}"
if [[ -z "$found" ]]; then
  echo "Installed the postgresql package but still found no initdb." >&2
  exit 1
fi
echo "PostgreSQL server binaries installed: $(dirname "$found")"
