"""The tool plugin API: decorate a typed function, and the model can call it.

.. code-block:: python

    from agent.tools import ToolContext, tool

    @tool
    def open_door(ctx: ToolContext, door: str) -> str:
        \"\"\"Open a door of the building.\"\"\"
        ...

See :mod:`agent.tools.plugin` for the rules and docs/tools.md for a walk-through.
Only the plugin API is imported here: :mod:`agent.config` imports
:mod:`agent.tools.settings`, so this package must not import the config.
"""

from agent.errors import ErrorCategory, ToolError
from agent.tools.plugin import Camera, Tool, ToolContext, tool

__all__ = ["Camera", "ErrorCategory", "Tool", "ToolContext", "ToolError", "tool"]
