"""Start a student from its teacher's weights (init_conf of a student config).

- ``first_n_blocks: N``: the input layer and the first N encoder blocks (and the CTC head if it fits),
  for a student as wide as its teacher with fewer blocks;
- ``name_map: {student prefix: teacher prefix}``: parameters of equal shape, by name;
- ``slice_width: true``: every parameter the teacher has under the same name, cut to the student's
  shape (its leading rows, columns, channels; an LSTM's gates and an attention layer's heads each cut
  alone, by the student's count of them), for a student narrower and shallower than its teacher, as
  a progressive chain makes them: block i starts from the teacher's block i. Which channels survive is arbitrary (the first ones): a start, not a
  pruned model; distillation does the rest.
"""
import torch

from kdtool.errors import ConfigError

INIT_KEYS = ("first_n_blocks", "name_map", "slice_width")


def init_from_teacher(student, teacher, init_conf):
    """Copy teacher weights into the student (see the module docstring); returns the copied names.
    A name or shape that does not fit is a ConfigError naming it."""
    init_conf = dict(init_conf or {})
    unknown = sorted(set(init_conf) - set(INIT_KEYS))
    if unknown:
        raise ConfigError(f"init_conf: unknown key(s) {unknown}; allowed: {list(INIT_KEYS)}")
    s_state, t_state = student.state_dict(), teacher.state_dict()
    if init_conf.get("slice_width"):
        if set(init_conf) - {"slice_width"}:
            raise ConfigError("init_conf: slice_width takes every parameter the teacher has; leave out "
                              f"{sorted(set(init_conf) - {'slice_width'})}")
        return _slice_width(student, s_state, t_state)
    name_map = dict(init_conf.get("name_map") or {})
    n = init_conf.get("first_n_blocks")
    if n is not None:
        t_blocks = len(getattr(teacher.encoder, "encoders", []))
        s_blocks = len(getattr(student.encoder, "encoders", []))
        if not 1 <= n <= min(t_blocks, s_blocks):
            raise ConfigError(f"init_conf: first_n_blocks {n} must be in 1..{min(t_blocks, s_blocks)} "
                              f"(teacher has {t_blocks} encoder blocks, student {s_blocks})")
        name_map.update({"encoder.embed": "encoder.embed",
                         **{f"encoder.encoders.{i}.": f"encoder.encoders.{i}." for i in range(n)}})
        if student.ctc is not None and teacher.ctc is not None and \
                s_state["ctc.ctc_lo.weight"].shape == t_state["ctc.ctc_lo.weight"].shape:
            name_map["ctc."] = "ctc."
    copied = {}
    for s_prefix, t_prefix in name_map.items():
        names = [k for k in s_state if k.startswith(s_prefix)]
        if not names:
            raise ConfigError(f"init_conf: no student parameter starts with {s_prefix!r}")
        for k in names:
            t_key = t_prefix + k[len(s_prefix):]
            if t_key not in t_state:
                raise ConfigError(f"init_conf: student {k} maps to teacher {t_key}, which the teacher lacks")
            if t_state[t_key].shape != s_state[k].shape:
                raise ConfigError(f"init_conf: student {k} {list(s_state[k].shape)} does not fit teacher "
                                  f"{t_key} {list(t_state[t_key].shape)}")
            copied[k] = t_state[t_key]
    student.load_state_dict(copied, strict=False)
    return sorted(copied)


def _groups(student, name):
    """(groups along dim 0, groups along dim 1) of a parameter: the blocks that must be cut one by one
    so that each keeps its meaning (an LSTM's gates; an attention layer's heads)."""
    owner, _, leaf = name.rpartition(".")
    module = student.get_submodule(owner) if owner else student
    if isinstance(module, torch.nn.LSTM):
        return 4, 1  # input, forget, cell and output gates, stacked along dim 0
    if isinstance(module, torch.nn.GRU):
        return 3, 1
    parent_name, _, child = owner.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    heads = getattr(parent, "h", None)  # espnet's MultiHeadedAttention (and its relative-position kin)
    if isinstance(heads, int) and hasattr(parent, "d_k"):
        if child in ("linear_q", "linear_k", "linear_v", "linear_pos"):
            return heads, 1
        if child == "linear_out" and leaf == "weight":
            return 1, heads
    return 1, 1


def _cut(t, shape, groups):
    """The leading part of tensor ``t`` of ``shape``, dims 0 and 1 cut group by group."""
    for dim, g in enumerate(groups):
        if g > 1:
            t = t.unflatten(dim, (g, t.shape[dim] // g))
            t = t.narrow(dim + 1, 0, shape[dim] // g).flatten(dim, dim + 1)
    return t[tuple(slice(0, n) for n in shape)]


def _slice_width(student, s_state, t_state):
    copied = {}
    for k, s in s_state.items():
        if k not in t_state:
            continue  # e.g. the teacher's blocks beyond the student's are simply not used
        t = t_state[k]
        if s.dim() != t.dim() or any(a > b for a, b in zip(s.shape, t.shape)):
            raise ConfigError(f"init_conf: slice_width: student {k} {list(s.shape)} is not a part of the "
                              f"teacher's {list(t.shape)}")
        groups = _groups(student, k) if s.dim() else (1, 1)
        if any(g > 1 and (s.shape[d] % g or t.shape[d] % g) for d, g in enumerate(groups[:s.dim()])):
            groups = (1, 1)  # the student's head count does not divide the teacher's dim: cut plainly
        copied[k] = _cut(t, s.shape, groups[:s.dim()]).clone()
    if not copied:
        raise ConfigError("init_conf: slice_width: the teacher has no parameter of the student's names "
                          "(a different model kind?)")
    student.load_state_dict(copied, strict=False)
    return sorted(copied)
