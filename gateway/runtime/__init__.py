"""Several processes: the supervisor, its workers, and what they share."""
