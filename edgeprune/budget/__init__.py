"""Budgets: the keep schedule that meets a latency target (search), the budget file,
and ``verify`` (the chosen schedule measured on the device)."""
