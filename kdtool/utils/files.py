"""Small file helpers shared by the stages."""
import hashlib
from pathlib import Path


def file_sha256(path):
    """sha256 of a file's bytes (hex): what a later stage compares to know an input is unchanged."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
