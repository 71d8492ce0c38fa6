"""The device client's one error type, apart so that the client's parts can raise it without importing the client."""


class ClientError(RuntimeError):
    """A condition the device cannot train under (artifact mismatch, unsupported strategy, failed run)."""
