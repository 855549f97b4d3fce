"""Evaluation harnesses: runner (workers, resume, results), benchmark protocols, reports."""
