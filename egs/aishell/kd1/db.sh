# Where the corpora live on this machine: edit the default, or set the variable in the environment.
# AISHELL-1 (https://www.openslr.org/33): the folder that holds data_aishell/ (or data_aishell itself),
# with the per-speaker archives in data_aishell/wav/ already extracted.
AISHELL=${AISHELL:-/path/to/aishell}
