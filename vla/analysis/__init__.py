"""Looking inside trained policies (routing statistics, ...)."""
