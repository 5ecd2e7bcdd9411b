"""Knowledge distillation at the frame level (stages 4-5): stored soft labels (``softlabels``, the
on-disk format), CTC forward-backward targets (``forward_backward``) and losses (``losses``)."""
from kdtool.kd.forward_backward import ctc_occupancies, ctc_occupancies_batch
from kdtool.kd.losses import hinton_kd_loss, kl_div_soft, pool_to_grid, soften
from kdtool.kd.softlabels import (MissingSoftLabelError, SoftLabelError, SoftLabelReader, SoftLabelWriter,
                                  bytes_per_frame, merge_jobs, to_topk, tokens_sha256)
