"""The KD terms of stage 5, one module each, in one table: ``TERMS`` (name -> Term, in the order of
the loss's sum). distill, its loss, its dataset and the results table ask the table; adding a term
is one module (a ``kdtool.kd.terms.base.Term``) and one entry here."""
from kdtool.kd.terms.base import Term  # noqa: F401
from kdtool.kd.terms.frame import FrameTerm
from kdtool.kd.terms.hidden import HiddenTerm
from kdtool.kd.terms.lattice import LatticeTerm
from kdtool.kd.terms.seq import SeqTerm
from kdtool.kd.terms.token import TokenTerm

TERMS = {t.name: t for t in (FrameTerm(), TokenTerm(), SeqTerm(), LatticeTerm(), HiddenTerm())}


def term_of_dump_type(type):
    """The term a stage-4 soft-label type feeds (None if none)."""
    return next((t.name for t in TERMS.values() if type in t.dump_types), None)


def per_frame_dump_types():
    """The soft-label types stored per encoder frame (the results table's bytes per frame)."""
    return tuple(type for t in TERMS.values() if t.per_frame for type in t.dump_types)
