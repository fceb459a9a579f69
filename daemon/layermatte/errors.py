"""Domain errors. Each maps to one gRPC status and one CLI exit message, so the
server, the CLI and the plug-ins report a failure the same way."""


class LayermatteError(Exception):
    """Base class: the message is shown to the user as is."""

    grpc_code = "INTERNAL"


class InvalidInput(LayermatteError):
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(LayermatteError):
    grpc_code = "NOT_FOUND"


class ModelNotPulled(LayermatteError):
    grpc_code = "FAILED_PRECONDITION"


class TooLarge(LayermatteError):
    grpc_code = "RESOURCE_EXHAUSTED"


class Busy(LayermatteError):
    grpc_code = "RESOURCE_EXHAUSTED"


class Cancelled(LayermatteError):
    grpc_code = "CANCELLED"


class DaemonUnavailable(LayermatteError):
    """No daemon answers, or the one started in the background died."""
    grpc_code = "UNAVAILABLE"


class DownloadError(LayermatteError):
    grpc_code = "UNAVAILABLE"


class ChecksumMismatch(DownloadError):
    grpc_code = "DATA_LOSS"


_BY_STATUS = {"INVALID_ARGUMENT": InvalidInput, "NOT_FOUND": ModelNotFound,
              "FAILED_PRECONDITION": ModelNotPulled, "RESOURCE_EXHAUSTED": Busy,
              "CANCELLED": Cancelled, "UNAVAILABLE": DaemonUnavailable}


def from_status(code: str, message: str) -> LayermatteError:
    """A daemon's failure (status code name and message) as the domain error
    clients report; the same for the gRPC and the framed transport."""
    if code == "RESOURCE_EXHAUSTED" and "limit is" in message:
        return TooLarge(message)
    return _BY_STATUS.get(code, LayermatteError)(message or code)
