"""The exceptions navtalk-agent raises, in one hierarchy.

.. code-block:: text

    NavtalkAgentError
    ├── ConfigError               a setting is missing or invalid (names the key)
    ├── BusError                  the ZeroMQ bus cannot be reached or used
    │   └── MessageDecodeError    a frame on the bus is not a valid message
    ├── DeviceError               an audio device, screen or camera is missing or busy
    ├── ProtocolError             the NavTalk peer broke the protocol (wrong order, bad frame)
    ├── SessionError              the NavTalk session failed
    │   ├── TransientSessionError   worth retrying (network drop, server restart)
    │   └── PermanentSessionError   not worth retrying (bad license, no balance)
    ├── ToolError                 a tool could not run (carries a category)
    └── SupervisorError           a child process could not be started or kept alive

Errors that cross a process boundary travel as messages with an
:class:`ErrorCategory` (see :mod:`agent.messages`), never as pickled
exceptions.
"""

from __future__ import annotations

import enum
import json


class ErrorCategory(enum.StrEnum):
    """Whose fault an error is and whether retrying can help."""

    INVALID_ARGUMENTS = "invalid_arguments"  # the caller (the model) sent bad input
    HANDLER_ERROR = "handler_error"  # the tool handler raised
    TIMEOUT = "timeout"  # nothing answered in time
    UNAVAILABLE = "unavailable"  # the component that should answer is down
    UNKNOWN_TOOL = "unknown_tool"
    BAD_OUTPUT = "bad_output"  # the handler returned something that is not JSON
    CLOUD = "cloud"  # the NavTalk service
    DEVICE = "device"  # local hardware


#: What the model is told when there is nothing better to say (or nothing it may hear).
GENERIC_MESSAGES: dict[ErrorCategory, str] = {
    ErrorCategory.INVALID_ARGUMENTS: "the arguments were not valid for this tool",
    ErrorCategory.HANDLER_ERROR: "the tool failed",
    ErrorCategory.TIMEOUT: "the tool did not answer in time",
    ErrorCategory.UNAVAILABLE: "the tool is not available right now",
    ErrorCategory.UNKNOWN_TOOL: "there is no tool with that name",
    ErrorCategory.BAD_OUTPUT: "the tool returned a result that could not be used",
    ErrorCategory.CLOUD: "the cloud service failed",
    ErrorCategory.DEVICE: "a device the tool needs is not working",
}

MAX_MODEL_MESSAGE_CHARS = 400  # an error message the model reads is cut here


def model_message(category: ErrorCategory, message: str = "") -> str:
    """The text the model reads for an error: ``message`` on one line, at most
    :data:`MAX_MODEL_MESSAGE_CHARS` long, or the category's generic text if it is empty.

    Only messages written for the model belong here (validation errors, a
    :class:`ToolError` a plugin raised on purpose); an exception's own text never does:
    it may name devices, paths or hosts. Those get ``GENERIC_MESSAGES`` and the log.
    """
    text = " ".join(message.split())
    if not text:
        return GENERIC_MESSAGES.get(category, "the tool failed")
    if len(text) > MAX_MODEL_MESSAGE_CHARS:
        text = text[: MAX_MODEL_MESSAGE_CHARS - 1] + "\u2026"
    return text


def error_output(category: ErrorCategory, message: str = "") -> str:
    """What the model reads for a failed tool call: ``{"error": {"category", "message"}}``
    (the ``function_call_output`` string, and the ``output_json`` of an error result).
    The message goes through :func:`model_message`: one short line, generic when empty."""
    return json.dumps(
        {"error": {"category": category.value, "message": model_message(category, message)}}
    )


class NavtalkAgentError(Exception):
    """Base class of every error navtalk-agent raises on purpose."""


class ConfigError(NavtalkAgentError):
    """A setting is missing or invalid. The message names the key, the value and what is allowed."""


class BusError(NavtalkAgentError):
    """The ZeroMQ bus cannot be reached or used."""


class MessageDecodeError(BusError):
    """A multipart message on the bus is malformed or of an unknown type."""


class DeviceError(NavtalkAgentError):
    """An audio device, screen or camera is missing, busy or failed."""


class ProtocolError(NavtalkAgentError):
    """The NavTalk peer (or our own caller) broke the protocol's rules."""


class SessionError(NavtalkAgentError):
    """The NavTalk session failed."""


class TransientSessionError(SessionError):
    """A failure that a reconnect may cure (network drop, server restart)."""


class PermanentSessionError(SessionError):
    """A failure that retrying cannot cure (rejected license, insufficient balance)."""


class ToolError(NavtalkAgentError):
    """A tool could not run; ``category`` says why."""

    def __init__(self, message: str, category: ErrorCategory = ErrorCategory.HANDLER_ERROR):
        super().__init__(message)
        self.category = category


class SupervisorError(NavtalkAgentError):
    """A child process could not be started or kept alive."""
