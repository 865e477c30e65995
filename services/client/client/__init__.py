"""groker's example subscriber: subscribes itself and prints every message it receives."""
