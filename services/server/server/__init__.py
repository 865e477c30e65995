"""groker's load generator: publishes a steady stream and tracks what got confirmed."""
