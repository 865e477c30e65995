"""Code the three groker services share (the pooled HTTP client, health routes, logging,
settings) and, for what needs neither gevent nor Flask (webhooks, signatures, retry_after),
the `groker` CLI too: cli/pyproject.toml packages this folder with it."""
