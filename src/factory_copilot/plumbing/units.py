"""Engineering units: a line file's unit text to its UN/CEFACT (UNECE Recommendation 20) common code.

OPC UA (Part 8, 5.6.3) names a unit by its UNECE common code, sent as the integer UnitId of EUInformation;
one table here so the simulator's server, the collector and any export agree on what "degC" is.
"""

from __future__ import annotations

from typing import NamedTuple

UNITS_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
NO_UNIT_ID = -1  # OPC UA's "no UNECE code": a unit text this table does not know


class UneceUnit(NamedTuple):
    code: str  # UNECE Rec. 20 common code, e.g. "CEL"
    symbol: str
    name: str

    @property
    def unit_id(self) -> int:
        return unit_id(self.code)


# the unit texts line files use (seeds, tests, docs/line-file.md), by their UNECE common code
UNECE: dict[str, UneceUnit] = {
    "degC": UneceUnit("CEL", "°C", "degree Celsius"),
    "°C": UneceUnit("CEL", "°C", "degree Celsius"),
    "K": UneceUnit("KEL", "K", "kelvin"),
    "bar": UneceUnit("BAR", "bar", "bar [unit of pressure]"),
    "mbar": UneceUnit("MBR", "mbar", "millibar"),
    "kPa": UneceUnit("KPA", "kPa", "kilopascal"),
    "Pa": UneceUnit("PAL", "Pa", "pascal"),
    "%": UneceUnit("P1", "%", "percent"),
    "A": UneceUnit("AMP", "A", "ampere"),
    "V": UneceUnit("VLT", "V", "volt"),
    "kW": UneceUnit("KWT", "kW", "kilowatt"),
    "W": UneceUnit("WTT", "W", "watt"),
    "L/min": UneceUnit("L2", "l/min", "litre per minute"),
    "m3/h": UneceUnit("MQH", "m³/h", "cubic metre per hour"),
    "Nm3/h": UneceUnit("MQH", "m³/h", "cubic metre per hour"),  # at normal conditions; Rec. 20 has no own code
    "g": UneceUnit("GRM", "g", "gram"),
    "kg": UneceUnit("KGM", "kg", "kilogram"),
    "m/s": UneceUnit("MTS", "m/s", "metre per second"),
    "mm/s": UneceUnit("C16", "mm/s", "millimetre per second"),
    "rpm": UneceUnit("M46", "r/min", "revolution per minute"),
    "Hz": UneceUnit("HTZ", "Hz", "hertz"),
    "s": UneceUnit("SEC", "s", "second"),
    # counts per minute (bottles, packs): Rec. 20's reciprocal minute
    "bottles/min": UneceUnit("C94", "min⁻¹", "reciprocal minute"),
    "packs/min": UneceUnit("C94", "min⁻¹", "reciprocal minute"),
    "code": UneceUnit("C62", "1", "one"),  # an enumeration's code is dimensionless
}


def unit_id(code: str) -> int:
    """The OPC UA UnitId of a UNECE common code: its (up to 3) ASCII bytes as one integer (Part 8, 5.6.3)."""
    if not 1 <= len(code) <= 3 or not code.isascii():
        raise ValueError(f"{code!r} is not a UNECE common code (1 to 3 ASCII characters)")
    value = 0
    for ch in code:
        value = (value << 8) | ord(ch)
    return value


def unece(unit: str) -> UneceUnit | None:
    """The UNECE unit of a line file's unit text, or None when the table does not know it."""
    return UNECE.get(unit.strip())


__all__ = ["UNECE", "UNITS_NAMESPACE", "NO_UNIT_ID", "UneceUnit", "unece", "unit_id"]
