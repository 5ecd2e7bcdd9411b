#!/usr/bin/env bash
# The test suite, on a bare machine too: sets kdtool up (tools/setup.sh) on first use, then pytest.
#   tools/run_tests.sh                 # everything
#   tools/run_tests.sh -k fbank -x     # any pytest options
#   tools/run_tests.sh -n 2 --dist loadscope --no-loadscope-reorder   # on 2 cores, as CI (.ci/run) runs it
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"${root}/tools/setup.sh"
cd "${root}"
exec "${root}/tools/venv/bin/python" -m pytest "$@"
