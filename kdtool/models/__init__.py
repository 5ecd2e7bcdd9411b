"""ASR models assembled from espnet2 building blocks, configured the way ESPnet configures them: the
model kinds and the interface the KD code uses (asr), building one from a config (build), loading a
trained exp dir (load), packages of trained models (package), the streaming encoder (streaming)."""
from kdtool.models.build import MODEL_KEYS, build_model, count_params, model_size_mb  # noqa: F401
