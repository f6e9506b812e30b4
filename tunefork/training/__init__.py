"""The training recipe: batching, the step loop, evaluation, the efficiency record."""
