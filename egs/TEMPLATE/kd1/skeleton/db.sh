# Where the corpus lives on this machine: edit the default, or set the variable in the environment.
CORPUS=${CORPUS:-/path/to/corpus}
