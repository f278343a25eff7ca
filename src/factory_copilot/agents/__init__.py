"""The line for other agents: an MCP server (``factory-copilot mcp``) whose tools read the line's alarms, evidence,
trends, runbooks, incidents, health and shift handovers, and, where the line file allows, acknowledge and shelve.

``tools.py`` is what each tool returns (bounded, said so when cut), read from the store and the alarm journal;
``quoting.py`` keeps text from outside (signal descriptions, runbooks, comments) data; ``commands.py`` sends
write tools' commands over MQTT on the user's own level, as the dashboard does; ``access.py`` checks who an
HTTP caller is (a token, or the broker's users); ``server.py`` declares the tools with the ``mcp`` SDK and
serves them (stdio, streamable HTTP); ``cli.py`` is the command.
"""
