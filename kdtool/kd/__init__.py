"""Knowledge distillation (stages 4-5): the KD terms, one module each in one table (``terms``), the
stage-5 entry (``distill``) and loss (``distill_loss``), teacher data per utterance (``teacher_data``),
stage 4's dumps (``dump``, ``nbest``; ``softlabels`` is the on-disk format), CTC forward-backward targets
(``forward_backward``), frame-level and transducer-lattice losses (``losses``, ``rnnt``) and starting a
student from its teacher's weights (``init``)."""
from kdtool.kd.forward_backward import ctc_occupancies, ctc_occupancies_batch
from kdtool.kd.losses import hinton_kd_loss, kl_div_soft, pool_to_grid, soften
from kdtool.kd.softlabels import (MissingSoftLabelError, SoftLabelError, SoftLabelReader, SoftLabelWriter,
                                  bytes_per_frame, merge_jobs, to_topk, tokens_sha256)
