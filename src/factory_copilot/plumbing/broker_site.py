"""A site's Mosquitto configuration from a users file: TLS listener, password file, per-user ACL, persistence.

``factory-copilot broker init --users users.yaml --out DIR`` writes it; the demo writes the same
files for its generated demo users (``demo_accounts``), so the secure path is the tested path.

Identity comes from the broker, not from the payload: each person may publish only on
``<prefix>/+/+/commands/<own name>`` and ``.../ask/<own name>`` (Mosquitto's ``%u`` pattern), so
the service reads who sent a command from its topic. Passwords are stored as Mosquitto's own
``$7$`` hashes (PBKDF2-SHA512, what ``mosquitto_passwd`` writes), never in clear.

An edge broker may also bridge its lines to a site broker (``--bridge-to``): Mosquitto's own bridge carries
the lines' alarms, diagnoses, events, status, handovers and replies out and the site's commands and questions
in, at QoS 1 on a persistent session, so what is published while the WAN is down waits in the edge broker's
queue (on disk) and follows in order when the site is back. The bridge's state is a retained ``1``/``0`` on
``<prefix>/<site>/bridge/<name>`` on the edge broker, which the service reads for its /health.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from factory_copilot.errors import GiveUp
from factory_copilot.names import DEFAULT_PREFIX  # the topic scheme's; plumbing imports no station

# a user name is one topic level and a Mosquitto ACL %u substitution: no '/', '+', '#', spaces or controls
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
RESERVED = {"reply"}  # .../commands/reply/<id> is where the service answers
KINDS = {
    "person": "may read the line's topics and send commands and questions as itself",
    "reader": "may only read the line's topics (SCADA, MES, Node-RED, the dashboard's live feed)",
    "service": "the Factory Copilot service: reads and writes everything under the prefix and Sparkplug",
    "edge": "a Sparkplug B edge node: reads and writes spBv1.0/# only",
    "bridge": "an edge broker's bridge to this (site) broker: writes its lines' topics, reads their commands",
    "dashboard": "the operator dashboard: reads the line's topics and sends commands and questions on the level of "
                 "the person logged in to it (it checks their password itself)",
    "explainer": "one of the site's pool of explainers (factory-copilot explainer): takes the lines' explain jobs and "
                 "answers on their reply levels, nothing else",
}
MAX_PACKET_BYTES = 256 * 1024  # commands and questions are at most 64 KiB; a bigger packet is cut off at the broker
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$


class BrokerSiteError(GiveUp, ValueError):
    """A users file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    kind: str = "person"
    password: str = ""
    generated: bool = False  # the password was made here: written to the credentials file for handing out


def password_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's ``$7$`` password hash (PBKDF2-HMAC-SHA512, 12-byte salt), as ``mosquitto_passwd`` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_username(name: object, where: str) -> str:
    if not isinstance(name, str) or not USERNAME.match(name):
        raise BrokerSiteError(f"{where}: user name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-', "
                              "starting with a letter or digit (it becomes a topic level)")
    if name in RESERVED:
        raise BrokerSiteError(f"{where}: {name!r} is reserved (the service's reply topics use it)")
    return name


def load_accounts(path: str | Path) -> list[Account]:
    """The accounts of a users file (see docs/mqtt.md); passwords from ``password``, ``password_env`` or generated."""
    path = Path(path)
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BrokerSiteError(f"{path}: cannot read the users file: {exc}") from None
    entries = body.get("users") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BrokerSiteError(f"{path}: expected 'users:' with a list of users (name, kind, password_env)")
    accounts: list[Account] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path}: users[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise BrokerSiteError(f"{where}: expected a name or a mapping with 'name'")
        unknown = set(entry) - {"name", "kind", "password", "password_env"}
        if unknown:
            raise BrokerSiteError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = check_username(entry.get("name"), where)
        if name in seen:
            raise BrokerSiteError(f"{where}: user {name!r} is listed twice")
        seen.add(name)
        kind = entry.get("kind", "person")
        if kind not in KINDS:
            raise BrokerSiteError(f"{where} ({name}): kind {kind!r} is not one of {', '.join(KINDS)}")
        password, generated = entry.get("password"), False
        if entry.get("password_env"):
            password = os.environ.get(str(entry["password_env"]))
            if not password:
                raise BrokerSiteError(f"{where} ({name}): environment variable {entry['password_env']} is not set")
        if password is None:
            password, generated = secrets.token_urlsafe(18), True
        if not isinstance(password, str) or len(password) < 8:
            raise BrokerSiteError(f"{where} ({name}): a password needs at least 8 characters")
        accounts.append(Account(name, kind, password, generated))
    return accounts


def demo_accounts() -> list[Account]:
    """The demo's users, with fresh random passwords: the service, two people (an operator and a supervisor in the
    demo line's roles), Node-RED, the dashboard, a reader for ``alerts tail`` and the simulated edge node."""
    def pw() -> str:
        return secrets.token_urlsafe(12)
    return [Account("factory-copilot", "service", pw(), True), Account("ann", "person", pw(), True),
            Account("sam", "person", pw(), True), Account("node-red", "person", pw(), True),
            Account("dashboard", "dashboard", pw(), True), Account("viewer", "reader", pw(), True),
            Account("edge", "edge", pw(), True)]


def acl_text(accounts: list[Account], prefix: str = DEFAULT_PREFIX) -> str:
    lines = ["# written by factory-copilot broker init; see docs/mqtt.md",
             "# each person publishes commands and questions on its own topic level only (%u = its user name)"]
    people = [a for a in accounts if a.kind == "person"]
    readers = [a for a in accounts if a.kind == "reader"]
    # the explain jobs and their answers carry the lines' prompts: only the service (it sends them) and the
    # explainers may read them
    explain = [f"topic deny {prefix}/+/explain/#", f"topic deny {prefix}/+/+/explain/#"]
    for a in people:
        lines += ["", f"user {a.name}", f"topic read {prefix}/#", *explain]
    for a in readers:  # denied before the %u pattern below would let it write its own levels
        lines += ["", f"user {a.name}", f"topic read {prefix}/#", f"topic deny {prefix}/+/+/commands/#",
                  f"topic deny {prefix}/+/+/ask/#", *explain]
    for a in accounts:
        if a.kind == "service":
            # Sparkplug B 3.0's STATE lives under spBv1.0/STATE/; 2.2's legacy STATE/<host_id> at the top
            lines += ["", f"user {a.name}", f"topic readwrite {prefix}/#", "topic readwrite spBv1.0/#",
                      "topic readwrite STATE/#"]
        elif a.kind == "bridge":  # carries many lines' topics, as each edge service wrote them
            lines += ["", f"user {a.name}", f"topic readwrite {prefix}/#"]
        elif a.kind == "edge":
            lines += ["", f"user {a.name}", "topic readwrite spBv1.0/#"]
        elif a.kind == "dashboard":  # a gateway: the person logged in to it is the topic level it writes on
            lines += ["", f"user {a.name}", f"topic read {prefix}/#", f"topic write {prefix}/+/+/commands/+",
                      f"topic write {prefix}/+/+/ask/+", *explain]
        elif a.kind == "explainer":  # the jobs of every line of the site, and the reply levels of their copilots
            lines += ["", f"user {a.name}", f"topic read {prefix}/+/explain/jobs",
                      f"topic write {prefix}/+/+/explain/reply/#"]
    # writing commands and questions: every user on its own level only, whatever it puts in the payload
    lines += ["", "# any user: its own command and ask level", f"pattern write {prefix}/+/+/commands/%u",
              f"pattern write {prefix}/+/+/ask/%u", ""]
    return "\n".join(lines)


# what a bridge carries, under each line's <prefix>/<site>/<line>/ (the scheme is publish/topics.py's; a test
# checks every topic the publisher writes is carried out, and every topic a site user may write is carried in)
BRIDGE_OUT = ("+/alarms/#", "+/diagnosis/#", "events", "status", "handover", "commands/reply/#", "ask/reply/#")
BRIDGE_IN = ("commands/+", "ask/+")  # the site broker's ACL has already held each sender to its own level


def bridge_state_topic(site: str, name: str = "site", prefix: str = DEFAULT_PREFIX) -> str:
    """The edge broker's retained bridge state for a site's lines (``bridge`` is no line's topics: no kind)."""
    return f"{prefix}/{site}/bridge/{name}"


@dataclass(frozen=True, slots=True)
class Bridge:
    """An edge broker's connection to the site broker, for the lines ``lines`` ((site, line) pairs)."""

    address: str  # host:port of the site broker
    username: str
    password: str
    lines: tuple[tuple[str, str], ...]
    ca_file: Path | None = None  # None with tls: the system's trust store
    tls: bool = True
    name: str = "site"

    @classmethod
    def parse(cls, address: str, username: str, password: str, lines: list[str], ca_file: str | None = None,
              tls: bool = True, name: str = "site") -> "Bridge":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BrokerSiteError(f"--bridge-to {address!r}: expected HOST:PORT of the site broker")
        if not lines:
            raise BrokerSiteError("--bridge-to needs --bridge-line SITE/LINE for each line this edge box serves")
        pairs = []
        for spec in lines:
            site, _, line = spec.partition("/")
            if not site or not line or any(c in spec for c in "+# "):
                raise BrokerSiteError(f"--bridge-line {spec!r}: expected SITE/LINE as in the line file")
            pairs.append((site, line))
        check_username(username, "--bridge-user")
        if not password or len(password) < 8:
            raise BrokerSiteError("the bridge's password (--bridge-password-env) needs at least 8 characters")
        if ca_file is not None and not Path(ca_file).is_file():
            raise BrokerSiteError(f"--bridge-ca {ca_file}: no such file")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
            raise BrokerSiteError(f"bridge name {name!r}: letters, digits, '_' or '-'")
        return cls(address, username, password, tuple(pairs), Path(ca_file).resolve() if ca_file else None, tls,
                   name)

    def state_topic(self, prefix: str = DEFAULT_PREFIX) -> str:
        """Where the edge broker keeps the bridge's state (retained ``1`` up, ``0`` down) for the lines' services."""
        return bridge_state_topic(self.lines[0][0], self.name, prefix)


def bridge_text(bridge: Bridge, prefix: str = DEFAULT_PREFIX) -> str:
    """The ``connection`` section of mosquitto.conf for ``bridge``."""
    first_site, first_line = bridge.lines[0]
    client_id = f"factory-copilot-edge-{first_site}-{first_line}"[:64]
    conf = [
        "", f"# bridge to the site broker: the lines' alarms out, the site's commands in (docs/site.md)",
        f"connection {bridge.name}",
        f"address {bridge.address}",
        "bridge_protocol_version mqttv311",
        f"remote_clientid {client_id}",
        f"remote_username {bridge.username}",
        f"remote_password {bridge.password}",
        # a persistent session at both ends: what the edge queued while the WAN was down is sent when it is back
        "cleansession false",
        "start_type automatic",
        "restart_timeout 2 30",  # reconnect after 2 s, backing off to 30 s
        "keepalive_interval 20",
        "try_private true",  # the site broker knows a bridge and does not echo its own messages back
        "notifications true",
        "notifications_local_only true",
        f"notification_topic {bridge.state_topic(prefix)}",
    ]
    if bridge.tls:
        conf += [f"bridge_cafile {bridge.ca_file}" if bridge.ca_file else "bridge_capath /etc/ssl/certs",
                 "bridge_tls_version tlsv1.2", "bridge_insecure false"]
    for site, line in bridge.lines:
        base = f"{prefix}/{site}/{line}/"
        conf += [f"topic {t} out 1 {base} {base}" for t in BRIDGE_OUT]
        conf += [f"topic {t} in 1 {base} {base}" for t in BRIDGE_IN]
    return "\n".join(conf) + "\n"


def make_certificates(folder: Path, hostnames: list[str], days: int = 825) -> tuple[Path, Path, Path]:
    """A site CA and a server certificate it signed for ``hostnames`` (DNS names or IP addresses): (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Factory Copilot site CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = folder / "ca.crt", folder / "server.crt", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    _private(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _private(folder / "ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _private(path: Path, data: bytes | str) -> None:
    """A file only its owner may read (keys, password hashes, generated passwords)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


@dataclass(slots=True)
class SiteFiles:
    folder: Path
    conf: Path
    log_file: Path
    host: str
    port: int
    tls: bool
    ca_file: Path | None
    credentials: Path | None  # generated passwords, for handing out (0600)
    logins: Path | None = None  # the dashboard's users file (Argon2id hashes of the people's passwords)


def write_site(folder: str | Path, accounts: list[Account], *, bind: str = "0.0.0.0", port: int | None = None,
               tls: bool = True, cert_file: str | Path | None = None, key_file: str | Path | None = None,
               hostnames: list[str] | None = None, prefix: str = DEFAULT_PREFIX, persistence: bool = True,
               max_queued: int = 100_000, log_packets: bool = False, extra: str = "",
               bridge: Bridge | None = None) -> SiteFiles:
    """Write mosquitto.conf, the password file, the ACL (and certificates) into ``folder``."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if not accounts:
        raise BrokerSiteError("no users: a broker nobody may log in to is of no use")
    names = [check_username(a.name, f"user {a.name!r}") for a in accounts]
    if len(set(names)) != len(names):
        raise BrokerSiteError("a user name appears twice")
    port = port or (8883 if tls else 1883)
    ca_path: Path | None = None
    if tls:
        if cert_file or key_file:
            if not (cert_file and key_file):
                raise BrokerSiteError("a given certificate needs both --cert and --key")
            for p in (cert_file, key_file):
                if not Path(p).is_file():
                    raise BrokerSiteError(f"{p}: no such file")
            cert_path, key_path = Path(cert_file).resolve(), Path(key_file).resolve()
        else:
            hosts = hostnames or _default_hostnames(bind)
            ca_path, cert_path, key_path = make_certificates(folder / "certs", hosts)
    _private(folder / "passwd", "".join(f"{a.name}:{password_hash(a.password)}\n" for a in accounts))
    (folder / "acl").write_text(acl_text(accounts, prefix))
    data = folder / "data"
    data.mkdir(exist_ok=True)
    log_file = folder / "mosquitto.log"
    conf = [
        "# written by factory-copilot broker init; regenerate rather than edit (docs/mqtt.md)",
        "per_listener_settings false",
        f"listener {port} {bind}",
    ]
    if tls:
        conf += [f"certfile {cert_path}", f"keyfile {key_path}", "tls_version tlsv1.2"]
    conf += [
        "allow_anonymous false",
        f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}",
        # a packet beyond this closes the sender's connection before anything is forwarded
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"max_queued_messages {max_queued}",
        *(["persistence true", f"persistence_location {data}/"] if persistence else ["persistence false"]),
        # a bridge's queue is kept on disk: saved every 10 s (and at shutdown), not only every 30 minutes
        *(["autosave_interval 10"] if persistence and bridge else []),
        f"log_dest file {log_file}",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        # Mosquitto 2.0 names a publish its ACL refused ("Denied PUBLISH from eve ...") only at debug level
        *(["log_type debug"] if log_packets else []),
        # who connected and who was refused, with the reason: the broker's side of the audit
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if os.geteuid() == 0:  # started as root, Mosquitto would switch to its own user, who may not read our files
        import pwd
        conf.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    conf_path = folder / "mosquitto.conf"
    if bridge is not None:
        if not persistence:
            raise BrokerSiteError("a bridge keeps its queue on disk: --no-persistence cannot go with --bridge-to")
        conf.append(bridge_text(bridge, prefix))
    conf_path = folder / "mosquitto.conf"
    if bridge is not None:  # it holds the bridge's password
        _private(conf_path, "\n".join(conf) + "\n" + extra)
    else:
        conf_path.write_text("\n".join(conf) + "\n" + extra)
    people = [a for a in accounts if a.kind == "person"]
    logins = None
    if people:  # the dashboard's log-in: the same password as the person's MQTT account, as an Argon2id hash
        from factory_copilot.plumbing.logins import Logins, hash_password

        logins = folder / "dashboard-users.yaml"
        Logins({a.name: hash_password(a.password) for a in people}).write(logins)
    generated = [a for a in accounts if a.generated]
    credentials = None
    if generated:
        credentials = folder / "credentials.yaml"
        _private(credentials, "# generated passwords: hand each to its user, then delete this file\n"
                 + yaml.safe_dump({"users": [{"name": a.name, "kind": a.kind, "password": a.password}
                                             for a in generated]}, sort_keys=False))
    return SiteFiles(folder, conf_path, log_file, bind, port, tls, ca_path, credentials, logins)


def _default_hostnames(bind: str) -> list[str]:
    hosts = [socket.getfqdn(), "localhost", "127.0.0.1"]
    if bind not in ("0.0.0.0", "::", "127.0.0.1"):
        hosts.insert(0, bind)
    return list(dict.fromkeys(h for h in hosts if h))


# ---- the command ------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="write a Mosquitto configuration for the site (users, ACL, TLS)")
    bsub = p.add_subparsers(dest="broker_command", metavar="WHAT", required=True)
    init = bsub.add_parser("init", help="mosquitto.conf, password file, per-user ACL and TLS certificate from a "
                                        "users file")
    init.add_argument("--users", required=True, help="users file: users: [{name, kind, password_env}] (docs/mqtt.md)")
    init.add_argument("--out", default="mosquitto", help="folder to write into (default ./mosquitto)")
    init.add_argument("--bind", default="0.0.0.0", help="address the listener binds to (default all)")
    init.add_argument("--port", type=int, help="listener port (default 8883 with TLS, 1883 without)")
    init.add_argument("--cert", help="the server certificate to use (PEM); default: a site CA and certificate are "
                                     "generated")
    init.add_argument("--key", help="the private key of --cert (PEM)")
    init.add_argument("--hostname", action="append", help="a name or address clients reach the broker by (for the "
                                                           "generated certificate; repeatable)")
    init.add_argument("--no-tls", action="store_true", help="plain MQTT (only for a listener on loopback)")
    init.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    init.add_argument("--no-persistence", action="store_true", help="keep no sessions or queued messages on disk")
    init.add_argument("--log-packets", action="store_true", help="log every packet, naming each publish the ACL "
                                                                 "refused (Mosquitto 2.0 logs those at debug only); "
                                                                 "for an audit period: the log grows fast")
    init.add_argument("--bridge-to", metavar="HOST:PORT", help="bridge this (edge) broker to the site broker there")
    init.add_argument("--bridge-line", action="append", default=[], metavar="SITE/LINE",
                      help="a line this edge box serves, as its line file names site and line (repeatable)")
    init.add_argument("--bridge-user", default="edge-bridge", help="the bridge's user on the site broker")
    init.add_argument("--bridge-password-env", default="FC_BRIDGE_PASSWORD", metavar="VAR",
                      help="environment variable holding that user's password (default FC_BRIDGE_PASSWORD)")
    init.add_argument("--bridge-ca", help="CA file the site broker's certificate is checked against (default: "
                                          "the system's trust store)")
    init.add_argument("--bridge-no-tls", action="store_true", help="plain MQTT to the site (a site broker on "
                                                                   "loopback only, for trying it)")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    if args.no_tls and args.bind not in ("127.0.0.1", "::1", "localhost"):
        print(f"error: --no-tls sends passwords in clear: only with --bind 127.0.0.1 (got {args.bind})",
              file=sys.stderr)
        return 2
    try:
        bridge = None
        if args.bridge_to:
            host = args.bridge_to.rpartition(":")[0]
            if args.bridge_no_tls and host not in ("127.0.0.1", "::1", "[::1]", "localhost"):
                raise BrokerSiteError(f"--bridge-no-tls sends the bridge's password in clear: only to a site broker "
                                      f"on loopback (got {args.bridge_to})")
            password = os.environ.get(args.bridge_password_env, "")
            if not password:
                raise BrokerSiteError(f"--bridge-to: environment variable {args.bridge_password_env} (the bridge "
                                      f"user's password on the site broker) is not set")
            bridge = Bridge.parse(args.bridge_to, args.bridge_user, password, args.bridge_line, args.bridge_ca,
                                  tls=not args.bridge_no_tls)
        elif args.bridge_line:
            raise BrokerSiteError("--bridge-line goes with --bridge-to HOST:PORT")
        accounts = load_accounts(args.users)
        site = write_site(args.out, accounts, bind=args.bind, port=args.port, tls=not args.no_tls,
                          cert_file=args.cert, key_file=args.key, hostnames=args.hostname, prefix=args.prefix,
                          persistence=not args.no_persistence, log_packets=args.log_packets, bridge=bridge)
    except BrokerSiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {site.conf} ({len(accounts)} users, listener {site.host}:{site.port}"
          f"{' TLS' if site.tls else ''}); start it with: mosquitto -c {site.conf}")
    if bridge is not None:
        print(f"Bridged to the site broker {bridge.address} as {bridge.username} for "
              f"{', '.join(f'{a}/{b}' for a, b in bridge.lines)}; its state: {bridge.state_topic(args.prefix)}")
    if site.ca_file:
        print(f"Clients trust {site.ca_file} (mqtt: {{tls: true, ca_file: ...}} in the line file)")
    if site.logins:
        print(f"Dashboard log-ins (same passwords): {site.logins} (dashboards/app.py --users ...)")
    if site.credentials:
        print(f"Generated passwords are in {site.credentials} (readable by you only): hand them out, then delete it")
    return 0

