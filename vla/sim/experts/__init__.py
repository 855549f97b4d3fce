"""Scripted experts that solve simulator tasks from privileged state (for demonstrations and sanity checks)."""
