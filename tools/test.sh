#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine with only the Rust
# toolchain: installs the system packages the tests use when they are
# missing, checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the working tree holds before the tests (compared at the end).
in_git=false
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  in_git=true
  tree_before=$(git status --porcelain --untracked-files=all)
fi

# Commands the tests drive for real (or a program path), and the Debian package of each.
NEEDED=(sqlite3:sqlite3 python3:python3 pip3:python3-pip curl:curl prlimit:util-linux smbd:samba smbpasswd:samba smbclient:smbclient ip:iproute2 swaks:swaks dovecot:dovecot-core /usr/lib/dovecot/lmtp:dovecot-lmtpd smtp-source:postfix etcd:etcd-server)

missing=()
for pair in "${NEEDED[@]}"; do
  cmd="${pair%%:*}"
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Postfix only for its test client (smtp-source): installed unconfigured,
  # so that no mail system is set up or started.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  # Installing a server package must not start it as a system service
  # (Samba, Dovecot, etcd): the tests start their own, privately.
  policy_added=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy_added=true
  fi
  # --no-remove: never replace what the machine has (another MTA, say);
  # fail instead, loudly.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-remove "${missing[@]}"
  if $policy_added; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

# Real clients of the SQL-over-HTTP API, from PyPI, beside the build
# (target/ is not tracked).
if [ ! -d target/python/pyrqlite ] || [ ! -d target/python/sqlalchemy_rqlite ]; then
  echo "== installing pyrqlite and sqlalchemy-rqlite (PyPI) into target/python"
  # (A Debian python3 marks itself externally managed; --target writes
  # nowhere it manages, so that is overridden when pip asks.)
  python3 -m pip install --quiet --disable-pip-version-check --target target/python pyrqlite sqlalchemy-rqlite ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target target/python pyrqlite sqlalchemy-rqlite
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi

# The suite must leave the working tree as it found it: nothing written
# beside the sources (a run that resolves a relative path against the
# working directory would show up here).
if $in_git; then
  echo "== the working tree after the tests"
  tree_after=$(git status --porcelain --untracked-files=all)
  if [ "$tree_before" != "$tree_after" ]; then
    echo "the test suite changed the working tree:" >&2
    diff <(echo "$tree_before") <(echo "$tree_after") >&2 || true
    exit 1
  fi
fi
