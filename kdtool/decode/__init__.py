"""Stage 6 decoding: the runner and its METHODS (runner), CTC greedy (ctc), joint CTC/attention beam
search (ar), Mask-CTC greedy and beam (maskctc), transducer greedy/beam (transducer) and chunk-by-chunk
streaming (streaming), the ONNX backend (onnx), and the one-thread speed benchmark (benchmark)."""
from kdtool.decode.runner import METHODS, decode_dir, load_decode_config, resolve_decode_config  # noqa: F401
