"""OPC UA vocabulary shared by the collector and the simulator's server.

Status code <-> Quality, engineering units as EUInformation, alarm priority <->
Alarms & Conditions Severity, and the self-signed application certificates both
sides make on first use. One home, so the server and the collector can never
disagree on what "Uncertain" or a severity of 700 means.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from pathlib import Path

from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from factory_copilot.plumbing.units import NO_UNIT_ID, UNITS_NAMESPACE, unece
from factory_copilot.records import Priority, Quality

# OPC UA Part 4, 7.39: the two top bits of a StatusCode are its severity
_SEVERITY_MASK = 0xC0000000
_UNCERTAIN = 0x40000000
_BAD = 0x80000000

STATUS_FOR_QUALITY = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.UNCERTAIN: ua.StatusCodes.Uncertain,
    Quality.BAD: ua.StatusCodes.BadSensorFailure,
}


def quality_of(status: ua.StatusCode | int | None) -> Quality:
    """Reduce an OPC UA StatusCode to the quality a detector must respect."""
    if status is None:
        return Quality.GOOD
    value = status.value if isinstance(status, ua.StatusCode) else int(status)
    severity = value & _SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD
    if severity == _UNCERTAIN:
        return Quality.UNCERTAIN
    return Quality.BAD


# Part 9's severity is 1-1000; its guidance splits it into bands of 200 (801-1000 high ... 1-200 low). A
# priority is served as the middle of its band, and a severity read in falls to the band it lies in.
SEVERITY_FOR_PRIORITY = {Priority.CRITICAL: 900, Priority.HIGH: 700, Priority.MEDIUM: 500, Priority.LOW: 300}


def severity_of(priority: Priority) -> int:
    """The OPC UA Severity (1-1000) an alarm of ``priority`` is served with."""
    return SEVERITY_FOR_PRIORITY[priority]


def priority_of(severity: int) -> Priority:
    """The priority of an OPC UA Severity: 801-1000 critical, 601-800 high, 401-600 medium, 1-400 low."""
    if severity > 800:
        return Priority.CRITICAL
    if severity > 600:
        return Priority.HIGH
    if severity > 400:
        return Priority.MEDIUM
    return Priority.LOW


def status_name(status: ua.StatusCode | int) -> str:
    value = status.value if isinstance(status, ua.StatusCode) else int(status)
    try:
        return ua.status_codes.get_name_and_doc(value)[0]
    except Exception:  # an unknown vendor code still needs a readable name
        return f"0x{value:08X}"


def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits property value: the UNECE code's UnitId, the line file's unit text as DisplayName.

    A unit text the UNECE table (plumbing/units.py) does not know keeps UnitId -1, OPC UA's "no code".
    """
    known = unece(unit)
    eu = ua.EUInformation()
    eu.NamespaceUri = UNITS_NAMESPACE
    eu.UnitId = known.unit_id if known else NO_UNIT_ID
    eu.DisplayName = ua.LocalizedText(unit)  # the collector reads the unit text back from here (unit_of)
    eu.Description = ua.LocalizedText(known.name if known else unit)
    return eu


def eu_range(low: float, high: float) -> ua.Range:
    """EURange / InstrumentRange property value."""
    return ua.Range(Low=float(low), High=float(high))


def unit_of(eu: object) -> str:
    """The unit text of an EngineeringUnits value (EUInformation), or '' when there is none."""
    name = getattr(eu, "DisplayName", None)
    return (getattr(name, "Text", None) or "") if name is not None else ""


def to_epoch(ts: datetime | None) -> float | None:
    if ts is None:
        return None
    if ts.tzinfo is None:  # asyncua hands out naive UTC datetimes
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.timestamp()


def from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


async def ensure_certificate(pki_dir: Path, name: str, app_uri: str, *, server: bool) -> tuple[Path, Path]:
    """Make a self-signed application certificate (DER) and key (PEM) in ``pki_dir`` unless they exist.

    Returns (certificate path, private key path).
    """
    pki_dir = Path(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    cert, key = pki_dir / f"{name}_cert.der", pki_dir / f"{name}_key.pem"
    await setup_self_signed_certificate(
        key,
        cert,
        app_uri,
        socket.gethostname(),
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": name, "organizationName": "factory-copilot"},
    )
    return cert, key
