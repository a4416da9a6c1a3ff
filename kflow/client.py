"""The workflow client: deploy, start, wait, status, cancel — async and sync.

::

    async with AsyncClient("http://127.0.0.1:8080") as kf:
        await kf.deploy(pathlib.Path("examples/hello.yaml"))
        run = await kf.start("hello", {"name": "Ada"})
        done = await kf.wait(run["workflow_id"])

    with Client() as kf:                      # KRUXIAFLOW_API_URL, credentials from env
        print(kf.status(workflow_id)["status"])

Credentials: client credentials (``client_id``/``client_secret``, exchanged
for a token at ``/api/v1/oauth/token`` and refreshed once on a 401), a static
``token``, or none for a server in insecure dev mode. Errors of the API
raise :class:`kflow.errors.ApiError` carrying the envelope's code; network
failures raise ``httpx.TransportError``. Event streams (``events``, ``wait``)
survive dropped connections, resuming after the last event received, until
the server has been unreachable for ``reconnect_seconds``.
"""

from __future__ import annotations

from kflow._client_async import AsyncClient
from kflow._client_common import FINAL_EVENTS, FINAL_STATUSES, ClientConfig
from kflow._client_sync import Client

__all__ = ["FINAL_EVENTS", "FINAL_STATUSES", "AsyncClient", "Client", "ClientConfig"]
