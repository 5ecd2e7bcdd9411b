"""Model training: data loading (features + token ids in length-bucketed batches)."""
