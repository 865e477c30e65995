"""Where accepted messages and subscriptions are kept: the `Store` interface (base.py), its
backends (one module each) and the table that chooses one by GROKER_STORE (backends.py)."""
