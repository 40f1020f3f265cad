"""A live dashboard in the browser: every call of this process (and of processes connected to it), as it runs.

    from parallelize import dashboard
    dashboard.start()          # prints http://127.0.0.1:PORT/?token=... once; open it in a browser

Safe by default: it listens on 127.0.0.1 only, every request needs the printed token (then an HttpOnly,
SameSite=Strict cookie), the Host header must be a loopback name, the page is read-only, and connected processes
post JSON with a key. MPIRE's names (start_dashboard, connect_to_dashboard, shutdown_dashboard) work too. The
``parallelize-dashboard`` command serves one that other processes connect to. See docs/dashboard.md.
"""

from __future__ import annotations

from ._control import Dashboard, connect_to_dashboard, shutdown_dashboard, start, start_dashboard, stop

__all__ = ["Dashboard", "connect_to_dashboard", "shutdown_dashboard", "start", "start_dashboard", "stop"]
