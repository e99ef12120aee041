"""Errors raised by the client library.

ClientError
 └── ConfigurationError   a parameter is out of range (raised at construction, never mid-poll)
"""


class ClientError(Exception):
    """Base class of the client library's errors."""


class ConfigurationError(ClientError, ValueError):
    """A parameter is out of range; the message names it."""
