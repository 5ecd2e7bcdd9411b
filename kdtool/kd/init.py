"""Start a student from its teacher's weights (init_conf of a student config)."""
from kdtool.models.build import ConfigError

INIT_KEYS = ("first_n_blocks", "name_map")


def init_from_teacher(student, teacher, init_conf):
    """Copy teacher weights into the student (see the module docstring); returns the copied names.
    A name or shape that does not fit is a ConfigError naming it."""
    init_conf = dict(init_conf or {})
    unknown = sorted(set(init_conf) - set(INIT_KEYS))
    if unknown:
        raise ConfigError(f"init_conf: unknown key(s) {unknown}; allowed: {list(INIT_KEYS)}")
    s_state, t_state = student.state_dict(), teacher.state_dict()
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
