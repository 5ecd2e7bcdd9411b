"""Model training (stages 3 and 5): configs with base: inheritance and --set overrides (config), data
loading (dataset: features + token ids; sampler: length-bucketed batches), the lightning module
(module), the trainer and its exp dir (trainer), exact resume (resume), progress lines and learning
curves (progress, plot)."""
