#!/usr/bin/env bash
# Start a recipe for a new corpus:  egs/TEMPLATE/kd1/new_recipe.sh <corpus>
# makes egs/<corpus>/kd1 with links to the shared scripts (kd.sh, path.sh, cmd.sh, utils/, as every recipe
# has them), run.sh, db.sh, a local/data.sh skeleton that says what it must write, and a generic conf/
# (pipeline.conf, an AR teacher, a CTC student and its KD version, decode configs) from
# egs/TEMPLATE/kd1/skeleton. Then write local/data.sh, set the set names in conf/pipeline.conf, ./run.sh.
set -euo pipefail

if [ $# -ne 1 ] || [ "$1" = --help ] || [ "$1" = -h ]; then
  echo "Usage: $0 <corpus>   (creates egs/<corpus>/kd1)" >&2
  exit 1
fi
corpus=$1
if ! [[ ${corpus} =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || [ "${corpus}" = TEMPLATE ]; then
  echo "$0: ${corpus@Q} is not a corpus name: letters, digits, '_', '.' and '-' (and not TEMPLATE)" >&2
  exit 1
fi
template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe=$(dirname "$(dirname "${template}")")/${corpus}/kd1
if [ -e "${recipe}" ]; then
  echo "$0: ${recipe} already exists; remove it or choose another name" >&2
  exit 1
fi

# Build beside the target and rename when complete: a failed run leaves no half-made recipe.
mkdir -p "$(dirname "${recipe}")"
tmp=$(mktemp -d "${recipe}.tmp.XXXXXX")
trap 'rm -rf "${tmp}"' EXIT
cp -r "${template}/skeleton/." "${tmp}/"
for f in kd.sh path.sh cmd.sh utils; do
  ln -s "../../TEMPLATE/kd1/${f}" "${tmp}/${f}"
done
chmod 755 "${tmp}"
mv "${tmp}" "${recipe}"
trap - EXIT
echo "Made ${recipe}: write local/data.sh, set the corpus path in db.sh and the set names in conf/pipeline.conf, then ./run.sh"
