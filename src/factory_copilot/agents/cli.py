"""The ``mcp`` sub-command: serve the line's MCP server (stdio or streamable HTTP), or add a bearer token.

The ``mcp`` SDK, uvicorn and Starlette are imported only when serving: the other commands, and the service,
never load them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from factory_copilot.agents.access import AccessError, BrokerUsers, TokenFile
from factory_copilot.config import MqttConnection, ServicePaths, load_line

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mcp", help="serve the line to agents over MCP (stdio, or streamable HTTP with tokens)")
    p.add_argument("--config", type=Path, help="the line file (YAML)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (an MCP client starts this command) or http (streamable HTTP on --host:--port, /mcp)")
    p.add_argument("--host", help="HTTP address (default the line file's mcp.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default the line file's mcp.port, 8765; 0: a free one)")
    p.add_argument("--allowed-host", action="append", default=[],
                   help="a Host name HTTP clients reach this server by, beside --host (DNS-rebinding protection)")
    p.add_argument("--tokens", type=Path, help="bearer tokens by user (HTTP); made with --add-token")
    p.add_argument("--users", type=Path, help="the broker's people (dashboard-users.yaml from broker init): HTTP "
                                              "callers send 'Bearer <user>:<password>'")
    p.add_argument("--add-token", metavar="USER", help="make a bearer token for USER in --tokens, print it, exit")
    p.add_argument("--state-dir", type=Path, help="override service.state_dir (where the service keeps its files)")
    p.set_defaults(func=run)


def _mqtt(line) -> MqttConnection:
    """The line's broker, as the account in the environment (never a password on the command line)."""
    update = {"client_id": None}
    if os.environ.get("FACTORY_COPILOT_MQTT_USERNAME"):
        update.update(username=os.environ["FACTORY_COPILOT_MQTT_USERNAME"],
                      password=os.environ.get("FACTORY_COPILOT_MQTT_PASSWORD"))
    return (line.mqtt or MqttConnection()).model_copy(update=update)


def run(args: argparse.Namespace) -> int:
    if args.add_token:
        if not args.tokens:
            print("error: --add-token needs --tokens FILE", file=sys.stderr)
            return 2
        try:
            token = TokenFile(args.tokens).add(args.add_token)
        except (AccessError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(token)
        print(f"(a bearer token for {args.add_token}; only its SHA-256 is kept in {args.tokens}: store it now)",
              file=sys.stderr)
        return 0
    if not args.config:
        print("error: --config LINE.yaml is needed to serve a line", file=sys.stderr)
        return 2
    if args.transport == "http" and not (args.tokens or args.users):
        print("error: over HTTP every caller must be authenticated: give --tokens FILE (make tokens with "
              "--add-token USER) or --users dashboard-users.yaml (the broker's people)", file=sys.stderr)
        return 2
    try:
        checks = [TokenFile(args.tokens) if args.tokens else None, BrokerUsers(args.users) if args.users else None]
    except AccessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = load_line(args.config)
    paths = ServicePaths.of_line(line, args.config, args.state_dir)
    return asyncio.run(serve(line, paths, args, checks))


async def serve(line, paths: ServicePaths, args: argparse.Namespace, checks: list) -> int:
    from factory_copilot.agents import server
    from factory_copilot.agents.commands import CommandSender
    from factory_copilot.agents.tools import LineRecords
    from factory_copilot.plumbing.signals import stop_on_signals
    from factory_copilot.publish.topics import Topics

    records = LineRecords(line, paths)
    sender = None
    conn = _mqtt(line)
    if line.mcp.write_tools:
        sender = CommandSender(conn, Topics(line.site, line.line, line.service.alerts_prefix)).start()
    try:
        if args.transport == "stdio":
            mcp = server.build_server(records, sender, stdio_user=conn.username)
            log.info("MCP server of %s/%s on stdio; write tools %s", line.site, line.line,
                     f"as MQTT user {conn.username}" if sender else "off")
            await mcp.run_stdio_async()
            return 0
        host = args.host or line.mcp.host
        port = line.mcp.port if args.port is None else args.port
        try:
            sock = server.bind(host, port)
        except OSError as exc:
            print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc} (set mcp.port or --port)",
                  file=sys.stderr)
            return 2
        url = server.url_of(sock)
        mcp = server.build_server(records, sender, tokens=server.LineTokens(*checks), url=url)
        print(f"MCP server of {line.site}/{line.line}: {url} (bearer token required; write tools "
              f"{'on' if sender else 'off'})", file=sys.stderr, flush=True)
        await server.serve_http(mcp, sock, stop_on_signals(),
                                server.security(sock.getsockname()[0], sock.getsockname()[1], args.allowed_host))
        return 0
    finally:
        if sender is not None:
            sender.stop()
        records.close()
