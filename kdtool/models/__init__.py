"""ASR models assembled from espnet2 building blocks, configured the way ESPnet configures them."""
from kdtool.models.build import MODEL_KEYS, ConfigError, build_model, count_params, model_size_mb  # noqa: F401
