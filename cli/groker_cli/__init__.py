"""groker: the command line for a groker broker (publish, subscribe, stats, subscriptions)."""
