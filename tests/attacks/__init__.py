"""Attack submissions for the grading tests: each is built here, as a small fixture."""
