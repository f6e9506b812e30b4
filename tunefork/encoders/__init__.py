"""Input encoders: the Hugging Face transformer with padding-aware pooling, and small tabular encoders."""
