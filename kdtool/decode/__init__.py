"""Stage 6 decoding: CTC greedy, joint CTC/attention beam search, Mask-CTC, transducer greedy/beam."""
from kdtool.decode.runner import METHODS, decode_dir, load_decode_config, resolve_decode_config  # noqa: F401
