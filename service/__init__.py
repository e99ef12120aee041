"""The watch service's core: settings, models, the Redis store, the HTTP API."""
