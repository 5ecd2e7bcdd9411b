"""Stage 7: error rates with alignments (``wer``), the paired bootstrap (``bootstrap``), the papers' table
from the exp dirs' records (``summary``), RESULTS.md and results.json (``results``), its plots
(``plots``) and compression report (``compression``)."""
from kdtool.scoring.wer import align, score

__all__ = ["align", "score"]
