"""The exporter's one error type: bad requests and failed checks, each with a message a user can act on."""


class ExportError(ValueError):
    """An export that cannot be done or did not validate; the CLI prints the message and exits non-zero."""
