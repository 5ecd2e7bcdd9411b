#!/usr/bin/env bash
# Turns "--foo-bar value" (or "--foo-bar=value") into the shell variable foo_bar=value.
#
# Source it after the defaults, so that only declared options are accepted:
#     stage=1; fast=false
#     help_message="Usage: $0 [options] <args>"
#     . utils/parse_options.sh
# - an option without a declared variable fails with a clear message;
# - a variable whose default is true/false may be given alone: "--fast" means "--fast true"
#   (it takes the next argument only if that is true or false);
# - "--config FILE" sources FILE (bash assignments), as Kaldi's does; later options override it;
# - "--help" prints help_message and every option with its value;
# - parsing stops at the first argument that is not an option; the rest stay in "$@".

__po_show_help() {
  echo "${help_message:-Usage: $0 [options]}"
  echo "Options (current values):"
  local __po_line __po_n  # not "line"/"name": a local would hide an option of that name
  while read -r __po_line; do
    __po_n=${__po_line%%=*}
    [ "${__po_n}" = help_message ] && continue
    [ -n "${__po_names[${__po_n}]:-}" ] && printf '  --%-24s %s\n' "${__po_n//_/-}" "${!__po_n}"
  done < <(compgen -v | sed 's/$/=/')
}

# Options are the lower-case variables that exist when this file is sourced.
declare -A __po_names=()
for __po_v in $(compgen -v); do [[ "${__po_v}" =~ ^[a-z][a-z0-9_]*$ ]] && __po_names[${__po_v}]=1; done

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) __po_show_help; exit 0 ;;
    --) shift; break ;;
    --config|--config=*)
      # A file of bash assignments (name=value); options after it on the command line override it.
      if [ "$1" = --config ]; then __po_value=${2:-}; shift; else __po_value=${1#--config=}; fi
      [ -f "${__po_value}" ] || { echo "$0: --config: no such file '${__po_value}'" >&2; exit 1; }
      # shellcheck disable=SC1090
      . "${__po_value}"
      shift ;;
    --*)
      __po_arg=${1#--}
      __po_has_value=false
      if [[ "${__po_arg}" == *=* ]]; then
        __po_value=${__po_arg#*=}; __po_arg=${__po_arg%%=*}; __po_has_value=true
      fi
      __po_name=${__po_arg//-/_}
      if ! [[ "${__po_name}" =~ ^[a-z][a-z0-9_]*$ ]] || [ -z "${__po_names[${__po_name}]:-}" ]; then
        echo "$0: unknown option --${__po_arg} (no variable '${__po_name}' to set); see $0 --help" >&2
        exit 1
      fi
      __po_bool=false
      [ "${!__po_name}" = true ] || [ "${!__po_name}" = false ] && __po_bool=true
      if ! ${__po_has_value}; then
        if ${__po_bool} && [ "${2:-}" != true ] && [ "${2:-}" != false ]; then
          __po_value=true
        elif [ $# -ge 2 ]; then
          __po_value=$2; shift
        else
          echo "$0: option --${__po_arg} needs a value" >&2
          exit 1
        fi
      fi
      if ${__po_bool} && [ "${__po_value}" != true ] && [ "${__po_value}" != false ]; then
        echo "$0: option --${__po_arg} takes true or false, not '${__po_value}'" >&2
        exit 1
      fi
      printf -v "${__po_name}" '%s' "${__po_value}"
      shift ;;
    *) break ;;
  esac
done
unset __po_v __po_arg __po_name __po_value __po_has_value __po_bool
true
