"""The background processes: scheduler, poller, webhook dispatcher, and the `vtwatch` CLI."""
