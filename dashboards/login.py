"""The dashboard's log-in: who is at the screen, checked against the users file's Argon2id hashes.

With a users file (``--users``, written by ``factory-copilot broker init``) nothing shows before a
log-in, and every command, feedback and question goes out on the MQTT level of the person logged in
(``commands/<user>``), so the audit trail names them; the broker lets the dashboard's own MQTT
account write those levels and nobody else's. Without one the page is read-only. The name is
held in this browser session's server-side state only, never taken from the browser.
"""

from __future__ import annotations

import logging

import streamlit as st

from factory_copilot.plumbing.logins import Logins, LoginsError
from factory_copilot.plumbing.logs import Throttled, printable

log = logging.getLogger(__name__)
_failures = Throttled(log, 10.0)
USER_KEY = "login_user_name"  # session_state key of the person logged in


@st.cache_resource
def open_logins(path: str) -> Logins:
    return Logins.load(path)


def current_user() -> str | None:
    return st.session_state.get(USER_KEY)


def require_login(users_file: str | None, title: str) -> str | None:
    """The person logged in; otherwise the log-in form is shown and the script stops (read-only without a file)."""
    if not users_file:
        return None
    user = current_user()
    if user:
        return user
    try:
        logins = open_logins(users_file)
    except LoginsError as exc:
        st.error(f"Log-in is not possible: {exc}")
        st.stop()
    st.markdown(f"## {title}")
    st.caption("Log in to see and acknowledge this line's alarms.")
    with st.form("login_form", clear_on_submit=False, border=False):  # a form: Enter in either box logs in
        name = st.text_input("User name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", key="login", type="primary")
    if submitted:
        if name and password and logins.check(name.strip(), password):
            st.session_state[USER_KEY] = name.strip()
            st.session_state.pop("login_password", None)
            log.info("dashboard: %s logged in", printable(name.strip()))
            st.rerun()
        _failures.warning("login-failed", "dashboard: failed log-in as %s", printable(name, 64))
        st.error("Wrong user name or password.")
    st.stop()


def sidebar_user(users_file: str | None) -> None:
    """Who is logged in, and the way out; or why the page is read-only."""
    user = current_user()
    if user:
        st.markdown(f"Logged in as **{user}**")
        if st.button("Log out", key="logout"):
            st.session_state.pop(USER_KEY, None)
            st.rerun()
    elif not users_file:
        st.info("Read-only: no users file (--users), so nobody can log in to acknowledge or shelve.")
