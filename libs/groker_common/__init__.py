"""Code the three groker services share: the pooled HTTP client, health routes, logging."""
