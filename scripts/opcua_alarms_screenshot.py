"""Take docs/opcua-client.png: FreeOpcUa's GUI client showing the alarms the service's OPC UA server serves.

Two processes, two Pythons. The service's side (``--serve``, run with the project's venv) starts a real alarm
engine, alarm station and ``publish/opcua_server.AlarmServer`` on a free 127.0.0.1 port, signed and encrypted
(Basic256Sha256) with the users file ``broker init`` writes, and puts three alarms of the simulated line in
three states: one active and unacknowledged (HIGH), one acknowledged by the operator ann, one shelved by the
supervisor sam. The client's side (this script's default, run with a venv holding the GUI client, which is
no dependency of the project) opens FreeOpcUa's client window offscreen, logs in as ann over
Basic256Sha256 SignAndEncrypt, subscribes to AlarmConditionType events of the Server object, calls
ConditionRefresh, expands the address space down to the conditions, puts its event list across the bottom
(wrapped, one event per paragraph) and saves the window as a PNG.

Install the client once, outside the project::

    python3 -m venv /tmp/uagui && /tmp/uagui/bin/pip install opcua-client

Run it from the repository's root::

    QT_QPA_PLATFORM=offscreen /tmp/uagui/bin/python scripts/opcua_alarms_screenshot.py \\
        --service-python .venv/bin/python --out docs/opcua-client.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"ann": "ann-demo-pw", "sam": "sam-demo-pw"}  # throwaway accounts of this picture only
BEARING = "product_pump.bearing_temperature-limit"
ZONE1 = "heat_tunnel.zone1_temperature-limit"
HEADER = "air_compressor.header_pressure-limit"
# each alarm: (asset, signal, value, engineering limits), offered as detect's limit check offers it
ALARMS = {BEARING: ("product_pump", "bearing_temperature", 104.0, (0, 85)),
          ZONE1: ("heat_tunnel", "zone1_temperature", 152.0, (160, 210)),
          HEADER: ("air_compressor", "header_pressure", 5.4, (5.8, 8))}
# the fields the client's event list shows, in this order (one line per event)
FIELDS = ["Severity", "SourceName", "ConditionName", "ActiveState", "AckedState", "ShelvingState/CurrentState",
          "ClientUserId", "Message"]


# ---- the service's side: the project's venv -------------------------------------------------------------

async def serve(state_dir: Path) -> None:
    """Serve the three alarms until stdin closes; print the endpoint once they stand in their states."""
    from factory_copilot.alarms import AlarmEngine, AlarmSettings, AlarmStation
    from factory_copilot.config import SIMULATED_LINE, OpcuaAlarmServer, Roles, load_line
    from factory_copilot.plumbing.broker import free_port
    from factory_copilot.plumbing.buffer import Buffer, fan_out
    from factory_copilot.plumbing.logins import Logins, hash_password
    from factory_copilot.publish.opcua_server import AlarmServer
    from factory_copilot.records import AlarmState, Anomaly, OperatorCommand

    users = state_dir / "dashboard-users.yaml"
    Logins({name: hash_password(pw) for name, pw in PASSWORDS.items()}).write(users)
    line = load_line(SIMULATED_LINE)
    roles = Roles.model_validate({"operators": {"users": ["ann"], "shelve_max_s": 0}, "supervisors": ["sam"]})
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/factory-copilot/alarms/"
    served = OpcuaAlarmServer(endpoint=endpoint, security="basic256sha256_sign_encrypt", users=str(users))
    line = line.model_copy(update={"roles": roles, "service": line.service.model_copy(
        update={"opcua_server": served})})
    engine = AlarmEngine(line, state_dir / "alarms.db", AlarmSettings(on_delay_s=0, off_delay_s=3600))
    anomalies, events, to_server = Buffer(100, "anomalies"), Buffer(100, "alarm events"), Buffer(100, "events->opcua")
    station = AlarmStation(engine, anomalies, events, tick_s=0.05)
    server = AlarmServer(line, served, to_server, station.execute, state_dir / "alarms.db",
                         pki_dir=state_dir / "pki", max_shelve_s=engine.settings.max_shelve_s)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(station.run(stop)), asyncio.create_task(server.run(stop)),
             asyncio.create_task(fan_out(events, to_server))]
    try:
        await asyncio.wait_for(server.serving.wait(), 60)
        now = time.time()
        for i, (asset, signal, value, (lo, hi)) in enumerate(ALARMS.values()):
            limit = hi if value > hi else lo
            anomalies.offer(Anomaly(now - 600 + 120 * i, asset, "limit", value, limit, signal=signal, value=value,
                                    message=f"{asset}.{signal}: {value:g} beyond engineering limits [{lo:g}, {hi:g}]"))
        await until(lambda: all(engine.get(a) is not None for a in ALARMS), "the three alarms raised")
        for cmd in (OperatorCommand("acknowledge", ZONE1, "ann", comment="heater contactor checked"),
                    OperatorCommand("shelve", HEADER, "sam", comment="compressor 2 in maintenance", shelve_s=4 * 3600)):
            result = await station.execute(cmd)
            if not result.ok:
                raise SystemExit(f"{cmd.command} of {cmd.alarm_id}: {result.message}")
        await until(lambda: engine.get(ZONE1).state is AlarmState.ACTIVE_ACK and engine.get(HEADER).shelved_until,
                    "acknowledged and shelved")
        print(endpoint, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the client's side is done
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), 10)
        tasks[2].cancel()
        engine.close()


async def until(done, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---- the client's side: the GUI client's venv -----------------------------------------------------------

def take(endpoint: str, out: Path, work: Path, size: tuple[int, int]) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")  # the client's QSettings: not the user's own
    from asyncua import ua
    from asyncua.common.events import get_filter_from_event_type
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from PyQt5.QtWidgets import QApplication
    from uaclient.mainwindow import Window

    app_uri = "urn:freeopcua:client-gui"  # the GUI client's own application URI: its certificate must say it
    cert, key = work / "client-cert.der", work / "client-key.pem"
    asyncio.run(setup_self_signed_certificate(key, cert, app_uri, "localhost",
                                              [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "FreeOpcUa GUI"}))
    app = QApplication(sys.argv[:1])
    window = Window()
    window.resize(*size)
    user, host = "ann", endpoint.removeprefix("opc.tcp://")
    combo = window.ui.addrComboBox
    combo.insertItem(0, f"opc.tcp://{user}:{PASSWORDS[user]}@{host}")  # asyncua's Client reads the user from the URL
    combo.setCurrentIndex(0)
    ua_client = window.uaclient  # what the connection dialogs set
    ua_client.security_mode, ua_client.security_policy = "SignAndEncrypt", "Basic256Sha256"
    ua_client.application_certificate_path, ua_client.application_private_key_path = str(cert), str(key)
    window.show()
    window.connect()
    client = ua_client.client
    if client is None:
        raise SystemExit(f"the GUI client could not connect to {endpoint}")

    # the event list of the client, fed by its own handler: AlarmConditionType events of the Server object
    evfilter = client.tloop.post(get_filter_from_event_type(
        [client.aio_obj.get_node(ua.ObjectIds.AlarmConditionType)]))
    wanted = {"/".join(q.Name for q in op.BrowsePath): op for op in evfilter.SelectClauses}
    evfilter.SelectClauses = [wanted[f] for f in FIELDS]
    seen: dict[str, object] = {}
    handler = window.event_ui._handler
    handler.event_fired.connect(lambda ev: seen.__setitem__(ev.SourceName, ev))
    ua_client._event_sub = sub = client.create_subscription(200, handler)
    ua_client._subs_ev[client.nodes.server.nodeid] = sub.subscribe_events(client.nodes.server, evfilter=evfilter)
    window.event_ui._subscribed_nodes.append(client.nodes.server)
    client.nodes.server.get_child("0:ServerCapabilities")  # a round trip: the subscription stands
    client.get_node(ua.ObjectIds.ConditionType).call_method(
        ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
        ua.Variant(sub.aio_obj.subscription_id, ua.VariantType.UInt32))

    def standing() -> bool:  # the newest event of each alarm tells the state the service put it in
        ev = {a: seen.get(asset) for a, (asset, *_rest) in ALARMS.items()}
        return (all(ev.values()) and ev[BEARING].AckedState.Text == "Unacknowledged"
                and ev[ZONE1].AckedState.Text == "Acknowledged"
                and getattr(ev[HEADER], "ShelvingState/CurrentState").Text == "TimedShelved")

    deadline = time.monotonic() + 20
    while not standing():
        if time.monotonic() > deadline:
            raise SystemExit(f"the client did not see the three alarms in their states: {sorted(seen)}")
        app.processEvents()
        time.sleep(0.02)

    # the address space down to the conditions: Objects/<line>/<asset>/<alarm_id>
    ns = len(client.get_namespace_array()) - 1  # the service's namespace, registered after OPC UA's own
    tree = window.ui.treeView
    for alarm_id in [*ALARMS, BEARING]:  # the HIGH one last: it stays selected, its attributes shown
        window.tree_ui.expand_to_node(client.get_node(ua.NodeId(alarm_id, ns)))
        app.processEvents()
        tree.collapse(tree.currentIndex())  # the condition's own variables would hide its neighbours
    lay_out(window, size)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise SystemExit(f"could not write {out}")
    window.disconnect()
    for ev in seen.values():
        print(ev)
    print(f"wrote {out} ({window.width()}x{window.height()}), {len(seen)} alarms seen")


def lay_out(window, size: tuple[int, int]) -> None:
    """The events across the bottom, one wrapped line per event; the address space and attributes above."""
    from PyQt5.QtCore import Qt

    ui = window.ui
    ui.logDockWidget_2.hide()
    window.removeDockWidget(ui.evDockWidget)
    window.addDockWidget(Qt.BottomDockWidgetArea, ui.evDockWidget)
    ui.evDockWidget.show()
    ui.graphDockWidget.hide()  # no pyqtgraph here; the references show the condition is an AlarmConditionType
    ui.attrDockWidget.hide()  # a condition object's attributes say less than its references
    ui.refDockWidget.raise_()
    ui.evView.setWordWrap(True)
    ui.evView.setSpacing(3)
    window.resizeDocks([ui.evDockWidget], [int(size[1] * 0.42)], Qt.Vertical)
    window.resizeDocks([ui.refDockWidget], [int(size[0] * 0.42)], Qt.Horizontal)
    for column, width in enumerate((430, 260)):
        ui.treeView.setColumnWidth(column, width)
    for column, width in enumerate((150, 100, 190, 150)):
        ui.refView.setColumnWidth(column, width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the service's side, started by the client's
    ap.add_argument("--service-python", default=str(ROOT / ".venv" / "bin" / "python"),
                    help="the project's Python, for the service's side")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "opcua-client.png")
    ap.add_argument("--size", default="1200x800", help="the window, WIDTHxHEIGHT pixels")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    with tempfile.TemporaryDirectory(prefix="opcua-shot-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        service = subprocess.Popen([args.service_python, str(Path(__file__).resolve()), "--serve", str(work)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            endpoint = service.stdout.readline().strip()
            if not endpoint.startswith("opc.tcp://"):
                raise SystemExit(f"the service's side did not start (exit {service.wait()})")
            width, height = (int(v) for v in args.size.split("x"))
            take(endpoint, args.out, work, (width, height))
        finally:
            service.stdin.close()
            service.wait(30)


if __name__ == "__main__":
    main()
