"""The site's view of its PostgreSQL store: every line's alarm history and audit rows, read only, with their line.

A line's own store (``PostgresStore``) sees its line's rows (row-level security, and session views); this reader
reads the tables themselves, so it needs a site reader's role (a member of ``factory_copilot_site_reader``, not
a line's: see docs/site.md, "Who reads what"). Its connection is read only: a site-wide command can look at every line and change none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from factory_copilot.plumbing import postgres
from factory_copilot.records import Alarm, AlarmEvent, AlarmState
from factory_copilot.store.schema import COMPONENT, PG_MIGRATIONS
from factory_copilot.store.store import check_reader, check_role, line_views


def is_url(text: str | None) -> bool:
    """A PostgreSQL URL, rather than a file name."""
    return bool(text) and text.split("://", 1)[0] in ("postgresql", "postgres")


@dataclass(slots=True)
class LineAlarm:
    line: str
    alarm: Alarm


@dataclass(slots=True)
class LineEvent:
    line: str
    event: AlarmEvent


class SiteHistory:
    """Reads the alarms (each one's newest state) and the alarm events every line's store station wrote; with
    ``line``, one line's only (that line's role suffices, or a site reader's: the rows its own store reads)."""

    def __init__(self, url: str, line: str | None = None):
        """``line``: see that line's rows only, through the session views a line's own store reads (``line_views``)."""
        self.url, self.line, self.where = url, line, postgres.where(url)
        def setup(conn: Any) -> None:  # a role that would see fewer rows than asked is refused, not shown a part
            if line is None:
                check_reader(conn, url)
            else:
                check_role(conn, url, line, read_only=True)
                line_views(conn, line)

        self._conn = postgres.Connection(url, setup=setup, read_only=True)
        try:
            postgres.check_version(self._conn, len(PG_MIGRATIONS), COMPONENT)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "SiteHistory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def lines(self) -> list[str]:
        """The lines that have stored an alarm, in order."""
        return [r[0] for r in self._rows("SELECT DISTINCT line FROM alarms ORDER BY line")]

    def alarms(self, line: str | None = None, include_normal: bool = False) -> list[LineAlarm]:
        sql, params = "SELECT line, body FROM alarms WHERE TRUE", []
        if line is not None:
            sql += " AND line=?"
            params.append(line)
        if not include_normal:
            sql += " AND state != ?"
            params.append(AlarmState.NORMAL.value)
        rows = self._rows(sql + " ORDER BY line, priority, raised_at DESC", params)
        return [LineAlarm(r[0], Alarm.from_dict(json.loads(r[1]))) for r in rows]

    def audit(self, line: str | None = None, alarm_id: str | None = None, since: float | None = None,
              limit: int | None = None) -> list[LineEvent]:
        """Alarm events, oldest first (``limit``: the newest N), as the alarm journal's ``audit`` gives them."""
        sql, params = "SELECT line, alarm_id, ts, event, state, actor, comment, alarm, id FROM alarm_events WHERE TRUE", []
        for column, value in (("line", line), ("alarm_id", alarm_id)):
            if value is not None:
                sql += f" AND {column}=?"
                params.append(value)
        if since is not None:
            sql += " AND ts>=?"
            params.append(since)
        sql += " ORDER BY ts DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._rows(sql, params)
        return [LineEvent(r[0], AlarmEvent(r[1], r[2], r[3], AlarmState(r[4]), Alarm.from_dict(json.loads(r[7])),
                                           r[5], r[6])) for r in reversed(rows)]
