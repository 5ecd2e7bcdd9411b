"""Frame-level distillation losses, and teacher posteriors put on a student's frame grid (pool_to_grid).

Losses are summed over valid frames and divided by the batch size, the scaling of ESPnet's CTC
loss, so that ``alpha * kd + (1 - alpha) * ctc`` mixes comparable quantities.
"""
import torch


def soften(logits, temperature):
    """log_softmax(logits / T). Log-probabilities work as logits (log_softmax ignores a shift)."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)  # float32 under bf16 autocast too


def kl_div_soft(teacher, student_log_probs, mask):
    """KL(teacher || student) summed over frames where ``mask`` [B, T] is True, divided by B.

    ``teacher``: probabilities [B, T, V], or sparse ``(ids [B, T, K], probs [B, T, K])`` (top-k,
    renormalized): then only the K kept tokens count, sum p log p - sum p log q, with no dense scatter.
    """
    if isinstance(teacher, (tuple, list)):
        ids, p = teacher
        log_q = student_log_probs.gather(-1, ids)
    else:
        p, log_q = teacher, student_log_probs
    # xlogy: 0 log 0 = 0; the teacher term is a constant, kept so that identical distributions give 0.
    kl = (torch.special.xlogy(p, p) - p * log_q).sum(-1)
    return torch.where(mask, kl, 0.0).sum() / kl.shape[0]


def hinton_kd_loss(teacher, student_logits, temperature, mask, teacher_is_logits=False):
    """T^2 * KL(softmax(t / T) || softmax(s / T)) (Hinton et al. 2015), scaled as ``kl_div_soft``.

    ``teacher`` is by default what stage 4 stores: posteriors already computed at temperature T
    (dense [B, T, V] or sparse (ids, probs)); with ``teacher_is_logits`` it is softened here. The
    student is softened at the same T; the T^2 factor keeps gradient magnitudes comparable across
    temperatures (the soft gradients scale as 1/T^2).
    """
    if teacher_is_logits:
        teacher = soften(teacher, temperature).exp()
    return temperature ** 2 * kl_div_soft(teacher, soften(student_logits, temperature), mask)


def _normalize(probs):
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)


# ---- teacher posteriors on another frame grid ----------------------------------------------------
# The (kernel, stride) along time of each convolution of espnet's conv2d front-ends, by subsampling
# factor (Conv2dSubsampling2/-/6/8 of espnet.nets.pytorch_backend.transformer.subsampling; espnet2's
# asr_transducer ConvInput builds the same for 2, 4 and 6): what a dump's ``subsampling`` stands for.
FRONT_ENDS = {1: (), 2: ((3, 2), (3, 1)), 4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}


def conv_length(convs, n_frames):
    """Output frames of a front-end ``convs`` [(kernel, stride)] for ``n_frames`` input frames (no padding)."""
    for kernel, stride in convs:
        n_frames = (n_frames - kernel) // stride + 1
    return n_frames


def frame_grid(convs):
    """(offset, stride): encoder frame t of a front-end ``convs`` is centred on input frame offset + stride * t
    (the centre of its receptive field). conv2d (4x): 3 + 4t; conv2d6: 5 + 6t; conv2d8: 7 + 8t."""
    offset, stride = 0.0, 1
    for kernel, s in convs:
        offset += (kernel - 1) / 2 * stride
        stride *= s
    return offset, stride


def frame_groups(teacher_convs, student_convs, n_teacher, n_student):
    """Which teacher frames make each student frame's target: [n_student, n_teacher] of 0/1.

    Each teacher frame goes to the student frame whose centre is nearest its own on the input-frame
    axis (a tie to the later one; frames past the student's ends to its first or last frame), so a
    teacher frame is never split. From 4x to 8x the groups are teacher frames {2j, 2j+1}; from 4x to 6x
    {0, 1}, {2}, {3, 4}, {5}, ... A proportional map (student frame j = teacher frames [j r, (j+1) r),
    r = n_teacher / n_student, the earlier rule) ignores the front-ends' offsets (4x frame t is centred
    on input frame 4t+3, 6x frame t on 6t+5) and drifts from the true positions along the utterance,
    since r is not exactly the ratio of the strides. A finer student's frame that no teacher frame falls in takes the teacher frame
    nearest its centre (a spike then covers two adjacent student frames, which CTC collapses to one).
    """
    (t_off, t_stride), (s_off, s_stride) = frame_grid(teacher_convs), frame_grid(student_convs)
    t_centre = t_off + t_stride * torch.arange(n_teacher, dtype=torch.float64)
    to_student = torch.floor((t_centre - s_off) / s_stride + 0.5).long().clamp(0, n_student - 1)
    groups = torch.zeros(n_student, n_teacher)
    groups[to_student, torch.arange(n_teacher)] = 1.0
    empty = (groups.sum(1) == 0).nonzero().squeeze(1)
    if len(empty):
        s_centre = s_off + s_stride * empty.double()
        nearest = torch.floor((s_centre - t_off) / t_stride + 0.5).long().clamp(0, n_teacher - 1)
        groups[empty, nearest] = 1.0
    return groups


def pool_spikes(probs, groups, blank=0):
    """Teacher posteriors [T_t, V] on the student's frames [T_s, V], given ``frame_groups`` [T_s, T_t].

    The target is the one a CTC student can fit. Averaging the probabilities of a group (the earlier
    rule) keeps at most 1/r of a one-frame spike's mass: from 4x to 8x blank became the argmax of every
    pooled frame, and a student that fits such targets deletes the tokens. Here blank is the
    probability that no teacher frame of the group emits a label, the product of their blank
    probabilities (frames taken as independent), and each label shares the rest in proportion to its
    mass summed over the group. So a one-frame spike stays its student frame's argmax (a spike of 0.9,
    blank 0.1, beside a frame of blank 0.98: blank 0.1 * 0.98 = 0.098, the label ~0.88), rows are
    normalized, and a group of one frame is that frame unchanged. We chose the product over capping
    each label's summed mass at 1 with blank taking the rest: the capped sum saturates for tempered
    (T > 1) posteriors whose label mass is spread (two frames of blank 0.5 would give blank 0; the
    product gives 0.25).
    """
    groups = groups.to(probs)
    log_blank = probs[:, blank].clamp_min(1e-30).log()
    pooled_blank = (groups @ log_blank).exp()  # [T_s]
    labels = groups @ probs
    labels[:, blank] = 0.0
    share = (1 - pooled_blank) / labels.sum(-1).clamp_min(1e-30)
    out = labels * share[:, None]
    out[:, blank] = pooled_blank
    return _normalize(out)


def pool_to_grid(probs, teacher_convs, student_convs, n_student, blank=0):
    """``pool_spikes`` of teacher posteriors [T_t, V] onto a student front-end's ``n_student`` frames."""
    return pool_spikes(probs, frame_groups(teacher_convs, student_convs, probs.shape[0], n_student), blank)
