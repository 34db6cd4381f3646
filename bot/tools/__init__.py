"""Tools for the model, served by MCP servers: the file that names them, the toolbox that calls.

    servers = load_tool_servers(settings.mcp_servers_file, os.environ)
    async with Toolbox(servers, metrics=metrics) as toolbox:
        specs = toolbox.specs(profile.toolset)
        result = await toolbox.call(name, arguments_json, toolset=profile.toolset)

| module | owns |
|---|---|
| ``config.py`` | ``MCP_SERVERS_FILE`` → frozen values; toolsets; the names the model sees |
| ``calls.py`` | specs and results for the model; safe one-line summaries; calls in full |
| ``mcp.py`` | the ``mcp`` SDK: connections, tool lists, calls (the only importer of ``mcp``) |
"""

from bot.tools.calls import ToolResult, ToolSpec
from bot.tools.config import ToolServer, ToolServers, Toolset, load_tool_servers
from bot.tools.mcp import Backoff, ServerStatus, Toolbox

__all__ = [
    "Backoff",
    "ServerStatus",
    "ToolResult",
    "ToolServer",
    "ToolServers",
    "ToolSpec",
    "Toolbox",
    "Toolset",
    "load_tool_servers",
]
