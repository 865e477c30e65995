"""groker's broker: one FIFO queue fanned out to webhook subscribers."""
