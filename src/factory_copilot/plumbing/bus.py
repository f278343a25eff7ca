"""The line's bus: typed records from the station that gives them to every station that takes them.

A station gives through an *outlet* that names the record types it may give (offering another type is a bug,
raised at once); a station takes through a *subscription*, today's bounded, counted, drop-oldest ``Buffer``,
which receives the record types it names, in the order they were given. Delivery happens in ``offer`` itself,
on the giver's turn of the event loop: no copy tasks between stations, and a slow taker drops only its own
oldest records (counted and logged by its buffer), never holds up the giver or the other takers.

A record type given on the line and taken by nobody is counted per type (``unrouted``), so a lane wired and
never fed, or fed and never read, shows in ``/health`` and in the architecture test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Iterable

from factory_copilot.plumbing.buffer import Buffer


class Outlet:
    """What one station gives onto the bus (``offer`` as on a Buffer, so a station cannot tell the two apart)."""

    def __init__(self, bus: "Bus", station: str, gives: Iterable[type]):
        self.bus = bus
        self.station = station
        self.gives = tuple(gives)
        self.name = f"{station}: {', '.join(t.__name__ for t in self.gives)}"
        self.offered = 0

    def offer(self, item: Any) -> bool:
        """Deliver ``item`` to every subscription that takes its type; False if one of them dropped a record."""
        if not isinstance(item, self.gives):
            raise TypeError(f"{self.name} gives {', '.join(t.__name__ for t in self.gives)}, not "
                            f"{type(item).__name__}")
        self.offered += 1
        return self.bus.deliver(item)

    def offer_threadsafe(self, loop: asyncio.AbstractEventLoop, item: Any) -> None:
        """Hand a record over from a foreign thread (paho's network loop) without blocking it."""
        loop.call_soon_threadsafe(self.offer, item)

    def takers(self) -> list[Buffer]:
        return self.bus.takers(*self.gives)

    def qsize(self) -> int:
        """How far the slowest taker of these records is behind (a giver may refuse new work when it is full)."""
        return max((b.qsize() for b in self.takers()), default=0)

    @property
    def maxsize(self) -> int:
        return min((b.maxsize for b in self.takers()), default=1)

    def stats(self) -> dict[str, int]:
        return {"offered": self.offered, "queued": self.qsize(), "maxsize": self.maxsize,
                "dropped": sum(b.dropped for b in self.takers())}


class Bus:
    """Subscriptions by record type; ``outlet`` and ``subscribe`` are how the service wires its stations."""

    def __init__(self, default_size: int = 50_000):
        self.default_size = default_size
        self.subscriptions: list[tuple[str, Buffer, tuple[type, ...]]] = []
        self.outlets: list[Outlet] = []
        self.unrouted: Counter[str] = Counter()
        self._routes: dict[type, list[Buffer]] = {}

    def outlet(self, station: str, *gives: type) -> Outlet:
        """Where ``station`` gives records of the types ``gives`` (one outlet per lane of the station)."""
        if not gives:
            raise ValueError(f"outlet of {station!r} gives no record type")
        out = Outlet(self, station, gives)
        self.outlets.append(out)
        return out

    def subscribe(self, station: str, *takes: type, size: int | None = None) -> Buffer:
        """A bounded buffer of ``station`` that receives every record of the types ``takes`` (and their
        subclasses), in the order they were given."""
        if not takes:
            raise ValueError(f"subscription of {station!r} takes no record type")
        buf: Buffer = Buffer(size or self.default_size, f"{', '.join(t.__name__ for t in takes)} -> {station}")
        self.subscriptions.append((station, buf, tuple(takes)))
        self._routes.clear()  # routes are worked out again for the new subscription
        return buf

    def route(self, kind: type) -> list[Buffer]:
        """The subscriptions a record of type ``kind`` goes to (worked out once per type)."""
        route = self._routes.get(kind)
        if route is None:
            route = self._routes[kind] = [buf for _, buf, takes in self.subscriptions if issubclass(kind, takes)]
        return route

    def takers(self, *types: type) -> list[Buffer]:
        return list({id(buf): buf for t in types for buf in self.route(t)}.values())

    def deliver(self, item: Any) -> bool:
        kind = type(item)
        route = self.route(kind)
        if not route:
            self.unrouted[kind.__name__] += 1
        kept = True
        for buf in route:
            kept = buf.offer(item) and kept
        return kept

    def buffers(self) -> list[Buffer]:
        return [buf for _, buf, _ in self.subscriptions]

    def wiring(self) -> dict[str, dict[str, set[type]]]:
        """What each station takes and gives on this bus, as wired (the architecture test reads it)."""
        out: dict[str, dict[str, set[type]]] = {}
        for station, _, takes in self.subscriptions:
            out.setdefault(station, {"takes": set(), "gives": set()})["takes"].update(takes)
        for outlet in self.outlets:
            out.setdefault(outlet.station, {"takes": set(), "gives": set()})["gives"].update(outlet.gives)
        return out

    def check(self, stations: dict[str, Any]) -> None:
        """Every station is wired only with what its class declares it takes and gives (``takes``/``gives``):
        a lane the class does not know of is a wiring mistake, raised at build time rather than found live."""
        for name, wired in self.wiring().items():
            station = stations.get(name)
            if station is None:
                raise TypeError(f"the bus has lanes of {name!r}, which is no station of this service")
            for side in ("takes", "gives"):
                extra = wired[side] - set(getattr(station, side, ()))
                if extra:
                    raise TypeError(f"station {name!r} ({type(station).__name__}) is wired to {side[:-1]} "
                                    f"{', '.join(sorted(t.__name__ for t in extra))}, which its class does not declare")

    def stats(self) -> dict[str, Any]:
        return {"subscriptions": {buf.name: buf.stats() for _, buf, _ in self.subscriptions},
                "unrouted": dict(self.unrouted)}
