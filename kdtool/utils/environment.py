"""Where results were produced (versions, commit, CPU): RESULTS.md and the decoding benchmark record it."""
import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit():
    """HEAD of the repository kdtool is run from, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment():
    """(name, value) pairs describing where the results were produced."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("python version", platform.python_version()),
        ("pytorch version", _version("torch")),
        ("espnet version", _version("espnet")),
        ("kdtool version", _version("kdtool")),
        ("git commit", _git_commit() or "unknown"),
        ("CPU", _cpu_model()),
        ("CPU threads", str(threads)),
        # the vector instructions torch's kernels use (AVX2, AVX512): run times differ with them
        ("CPU capability (torch)", _cpu_capability()),
    ]


def _cpu_capability():
    try:
        import torch
        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return "unknown"
