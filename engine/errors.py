"""Exception types of the engine, each with the stable wire `code` it maps to.

The service layer turns any EngineError into an `error {code, message}` frame,
so the codes here are part of the protocol (docs/protocol.md).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a clear, client-presentable failure."""

    code = "internal"


class BadAudioError(EngineError):
    """Samples that cannot be transcribed: NaN/inf, wrong dtype/rate, empty or huge chunks."""

    code = "bad_audio"


class BadRequestError(EngineError):
    """A well-formed call with an invalid argument (unknown language, bad option)."""

    code = "bad_request"


class UnknownStreamError(EngineError):
    """No stream with this id is open on this scheduler."""

    code = "unknown_stream"


class StreamClosedError(EngineError):
    """The stream was ended or failed; it takes no more audio."""

    code = "stream_closed"


class OverloadedError(EngineError):
    """No free slot, or a stream's unprocessed audio exceeds its bound (backpressure)."""

    code = "overloaded"


class StepFailedError(EngineError):
    """A model step failed; the streams in that batch were ended with this error."""

    code = "internal"


class ModelLoadError(EngineError):
    """The model (hub id or directory) could not be loaded."""

    code = "model_load"
