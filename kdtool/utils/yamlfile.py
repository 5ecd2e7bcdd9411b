"""Reading a YAML file (a config, a decode config) with an error that names it."""
from pathlib import Path

import yaml

from kdtool.errors import ConfigError


def read_yaml(path, what="config"):
    """A YAML file's content, or a ConfigError naming the file."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
