"""End-to-end tests: real API, worker, simulator and Redis processes on loopback."""
