"""Core library: data, autoencoder zoo, losses, scores, thresholds and metrics."""
