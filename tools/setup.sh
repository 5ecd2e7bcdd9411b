#!/usr/bin/env bash
# Sets kdtool up on a bare machine; safe to rerun (does nothing that is already done).
#   1. Debian packages the built-in corpus needs (espeak-ng, flite, sox, fortunes), via apt-get as root.
#   2. tools/venv with kdtool installed editable, with its test extra.
# Usage: tools/setup.sh            (recipes call it through path.sh on first use)
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "${tools_dir}")
venv=${tools_dir}/venv
python=${KDTOOL_PYTHON:-python3.11}

# --- Debian packages -----------------------------------------------------------------------
declare -A need=([espeak-ng]=espeak-ng [flite]=flite [sox]=sox)
missing=()
for cmd in "${!need[@]}"; do command -v "${cmd}" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
[ -f /usr/share/games/fortunes/fortunes ] || missing+=(fortunes)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup.sh: missing Debian packages: ${missing[*]}" >&2
    echo "          install them as root:  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# --- Python virtual environment -------------------------------------------------------------
stamp=${venv}/.kdtool-installed
if [ ! -f "${stamp}" ] || [ "${root_dir}/setup.py" -nt "${stamp}" ]; then
  command -v "${python}" >/dev/null || { echo "setup.sh: ${python} not found (kdtool needs Python 3.11)" >&2; exit 1; }
  [ -x "${venv}/bin/python" ] || "${python}" -m venv "${venv}"
  echo "setup.sh: installing kdtool and its dependencies into ${venv} (torch is large: a few minutes)"
  # espnet pins setuptools<74; a venv's own setuptools may be newer or missing.
  # (this machine's pip config names local mirrors that may be absent: hide those warnings)
  quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }
  quiet "${venv}/bin/pip" install -q "setuptools<74" wheel
  quiet "${venv}/bin/pip" install -q -e "${root_dir}[test]"
  touch "${stamp}"
fi
echo "setup.sh: ready (${venv})"
