"""Serves the simulated line as a real OPC UA server (asyncua).

One folder per asset under Objects, one Double variable per signal (the mode
an Int32 enumeration) with its EngineeringUnits (a UNECE UnitId), EURange and,
where the line file gives one, InstrumentRange; each write carries the
reading's StatusCode (Good, Uncertain, Bad), its source timestamp and the
server's own. A reading stamped ahead of the server's clock is served as stamped, as a device with a
wrong clock serves it (the collector's gate is what catches it), counted and logged. Security None and/or Basic256Sha256
SignAndEncrypt with a self-signed server certificate kept in ``pki_dir``, and
username/password users when any are given.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from factory_copilot.plumbing.logs import Throttled
from factory_copilot.plumbing.opcua import STATUS_FOR_QUALITY, ensure_certificate, eu_information, eu_range, from_epoch
from factory_copilot.config import LineConfig
from factory_copilot.records import Reading

log = logging.getLogger(__name__)

Security = Literal["none", "sign-encrypt", "both"]
SERVER_URI = "urn:factory-copilot:simulator"


class LineUsers:
    """asyncua user manager: only the configured operators get in, by name and password."""

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)

    def get_user(self, iserver, username=None, password=None, certificate=None):  # noqa: ANN001 - asyncua's signature
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class LineServer:
    """The simulated line's OPC UA server; ``write(readings)`` updates the address space."""

    def __init__(
        self,
        line: LineConfig,
        endpoint: str = "opc.tcp://127.0.0.1:4840/factory-copilot/",
        *,
        security: Security = "none",
        users: dict[str, str] | None = None,
        pki_dir: str | Path | None = None,
        trusted_clients: Iterable[str | Path] | None = None,
    ):
        if security != "none" and pki_dir is None:
            raise ValueError("sign-encrypt security needs a pki_dir for the server certificate")
        self.line = line
        self.endpoint = endpoint
        self.security = security
        self.users = dict(users or {})
        self.pki_dir = Path(pki_dir) if pki_dir else None
        # None: any client certificate is accepted (demo); else only these DER/PEM files
        self.trusted_clients = None if trusted_clients is None else [Path(p) for p in trusted_clients]
        self.server: Server | None = None
        self.certificate: Path | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._types: dict[str, ua.VariantType] = {}
        self.writes = 0
        self.stamped_ahead = 0  # readings stamped later than the server's clock, served as stamped
        self._throttle = Throttled(log, 30.0)

    @property
    def signal_keys(self) -> list[str]:
        return list(self._nodes)

    async def start(self) -> "LineServer":
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"factory-copilot simulator: {self.line.site}/{self.line.line}")
        await server.set_application_uri(SERVER_URI)
        server.set_security_policy(self._policies())
        if self.security != "none":
            assert self.pki_dir is not None
            cert, key = await ensure_certificate(self.pki_dir, "server", SERVER_URI, server=True)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            self.certificate = cert
            if self.trusted_clients is not None:
                server.set_certificate_validator(self._trusted_validator(self.trusted_clients))
        if self.users:
            self._user_manager = LineUsers(self.users)
            server.iserver.set_user_manager(self._user_manager)
            server.set_identity_tokens([ua.UserNameIdentityToken])
        await self._build_address_space(server)
        await server.start()
        self.server = server
        log.info(
            "OPC UA server for %s/%s at %s (security %s, %d signals%s)",
            self.line.site,
            self.line.line,
            self.endpoint,
            self.security,
            len(self._nodes),
            f", users {', '.join(self.users)}" if self.users else ", anonymous",
        )
        return self

    def set_users(self, users: dict[str, str]) -> None:
        """Change who may log in, while serving (as a server's operator fixes an account)."""
        self.users = dict(users)
        manager = getattr(self, "_user_manager", None)
        if manager is None:
            raise RuntimeError("the server was started without users; start it with some to change them")
        manager.users = dict(users)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def __aenter__(self) -> "LineServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def write(self, readings: Iterable[Reading]) -> None:
        """Set each reading's variable: value, StatusCode from its quality, source timestamp."""
        if self.server is None:
            return
        iserver = self.server.iserver
        for r in readings:
            nodeid = self._nodes.get(r.key)
            if nodeid is None:
                continue
            vtype = self._types[r.key]
            if vtype is ua.VariantType.Int32:
                # a BAD reading carries no value; an enumeration has no NaN, its status says it is not usable
                value: float | int = 0 if r.value is None else int(round(r.value))
            else:
                value = float("nan") if r.value is None else float(r.value)
            now = time.time()
            if r.ts > now:
                self.stamped_ahead += 1
                self._throttle.warning("ahead", "OPC UA server: %d reading(s) stamped ahead of the server's clock "
                                       "(latest %s, %.3f s ahead), served as stamped", self.stamped_ahead,
                                       r.key, r.ts - now)
            dv = ua.DataValue(
                ua.Variant(value, vtype),
                StatusCode=ua.StatusCode(STATUS_FOR_QUALITY[r.quality]),
                SourceTimestamp=from_epoch(r.ts),
                ServerTimestamp=from_epoch(now),
            )
            await iserver.write_attribute_value(nodeid, dv)
            self.writes += 1

    def _policies(self) -> list[ua.SecurityPolicyType]:
        secure = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
        return {
            "none": [ua.SecurityPolicyType.NoSecurity],
            "sign-encrypt": [secure],
            "both": [ua.SecurityPolicyType.NoSecurity, secure],
        }[self.security]

    async def _build_address_space(self, server: Server) -> None:
        ns = await server.register_namespace(f"urn:factory-copilot:{self.line.site}:{self.line.line}")
        objects = server.nodes.objects
        for asset in self.line.assets:
            folder = await objects.add_folder(ua.NodeId(asset.id, ns), ua.QualifiedName(asset.id, ns))
            await folder.write_attribute(
                ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(asset.name)))
            )
            for signal in asset.signals:
                key = f"{asset.id}.{signal.name}"
                nodeid = ua.NodeId.from_string(signal.source.opcua) if signal.source.opcua else ua.NodeId(key, ns)
                # the mode is an enumeration of codes (Int32), every other signal an analog value (Double)
                vtype = ua.VariantType.Int32 if key == self.line.mode_key else ua.VariantType.Double
                initial = 0 if vtype is ua.VariantType.Int32 else math.nan
                var = await folder.add_variable(nodeid, ua.QualifiedName(signal.name, ns), initial, vtype)
                await var.add_property(
                    ua.NodeId(f"{key}.EngineeringUnits", nodeid.NamespaceIndex),
                    "EngineeringUnits",
                    eu_information(signal.unit),
                    ua.VariantType.ExtensionObject,
                    ua.NodeId(ua.ObjectIds.EUInformation),
                )
                # EURange: the range of normal operation (Part 8, 5.3.2): the alarm limits, else the normal band;
                # for the mode, the span of its codes, each named in EnumValues (as a MultiStateValueDiscrete)
                codes = (self.line.modes.codes or {}) if self.line.modes and vtype is ua.VariantType.Int32 else {}
                band = (min(codes), max(codes)) if codes else signal.limits or signal.normal
                if codes:
                    await var.add_property(
                        ua.NodeId(f"{key}.EnumValues", nodeid.NamespaceIndex), "EnumValues",
                        [ua.EnumValueType(Value=int(c), DisplayName=ua.LocalizedText(name),
                                          Description=ua.LocalizedText(name)) for c, name in sorted(codes.items())],
                        ua.VariantType.ExtensionObject, ua.NodeId(ua.ObjectIds.EnumValueType),
                    )
                await var.add_property(
                    ua.NodeId(f"{key}.EURange", nodeid.NamespaceIndex), "EURange", eu_range(*band),
                    ua.VariantType.ExtensionObject, ua.NodeId(ua.ObjectIds.Range),
                )
                if signal.physical:
                    await var.add_property(
                        ua.NodeId(f"{key}.InstrumentRange", nodeid.NamespaceIndex), "InstrumentRange",
                        eu_range(*signal.physical), ua.VariantType.ExtensionObject, ua.NodeId(ua.ObjectIds.Range),
                    )
                if signal.description:
                    await var.write_attribute(
                        ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(signal.description)))
                    )
                # no value yet: the sensor has not reported since the server started
                now = from_epoch(time.time())
                await server.write_attribute_value(nodeid, ua.DataValue(
                    ua.Variant(initial, vtype), StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData),
                    SourceTimestamp=now, ServerTimestamp=now,
                ))
                self._nodes[key] = nodeid
                self._types[key] = vtype

    @staticmethod
    def _trusted_validator(paths: list[Path]):
        fingerprints = {_fingerprint(p) for p in paths}

        async def validate(cert: x509.Certificate, app_description: ua.ApplicationDescription) -> None:
            if hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() not in fingerprints:
                log.warning("rejected client certificate %s: not in the trust list", cert.subject.rfc4514_string())
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

        return validate


def _fingerprint(path: Path) -> str:
    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


__all__ = ["LineServer", "LineUsers", "Security"]
