"""Splitting a stage's utterances over ``--nj`` jobs (feature extraction, soft-label and N-best dumps)."""


def check_jobs(nj, job=None):
    """Job options that cannot mean something else: nj >= 1, and job within 1..nj."""
    if nj < 1:
        raise ValueError(f"--nj {nj}: the number of jobs must be at least 1")
    if job is not None and not 1 <= job <= nj:
        raise ValueError(f"--job {job}: outside 1..{nj} (jobs are numbered from 1 to --nj)")


def job_slice(items, job, nj):
    """The job-th (1-based) of nj contiguous, nearly equal slices, so merged outputs stay sorted."""
    if not 1 <= job <= nj:
        raise ValueError(f"job {job} is outside 1..{nj}")
    n = len(items)
    return items[(job - 1) * n // nj: job * n // nj]
