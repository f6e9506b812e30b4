"""Reading tables, splitting them, and the on-disk preprocessing cache."""
