# Sourced by every recipe script: kdtool's virtual environment (set up on first use) and tools.
KDTOOL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
export KDTOOL_ROOT
if [ ! -f "${KDTOOL_ROOT}/tools/venv/.kdtool-installed" ]; then
  "${KDTOOL_ROOT}/tools/setup.sh" || { echo "path.sh: set-up failed (see above)" >&2; exit 1; }
fi
# shellcheck disable=SC1091
. "${KDTOOL_ROOT}/tools/venv/bin/activate"
export PATH="${KDTOOL_ROOT}/tools:${PATH}"
export LC_ALL=C          # sort data dirs in byte order, as Kaldi does
export PYTHONUTF8=1      # but read and write text as UTF-8
export PYTHONUNBUFFERED=1
