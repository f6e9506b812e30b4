"""Models: ECD (encoders → combiner → heads) and its self-contained artifact on disk."""
