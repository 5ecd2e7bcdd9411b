"""Stage 7: error rates with alignments (``wer``) and the RESULTS.md table (``results``)."""
from kdtool.scoring.wer import align, score

__all__ = ["align", "score"]
