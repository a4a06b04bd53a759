"""The Flower apps of a federated run, for the deployment engine (SuperLink + SuperNodes):
``romsim.fl.apps:server_app`` and ``romsim.fl.apps:client_app`` (docs/federated.md).

- ``client_app``: :mod:`romsim.fl.client` (what a client does with each message).
- ``server_app``: :class:`romsim.fl.runner.ServerLoop` on the FL TOML the run config names
  (``flwr run . --run-config 'config="fl.toml"'``, optionally ``out`` and ``resume``).

``romsim fl run`` (the simulation engine, :func:`romsim.fl.runner.run_fl`) runs the same
ClientApp and ServerLoop. Importing this module imports flwr (romsim's CLI imports it only when
an FL command runs).
"""

from __future__ import annotations

from romsim.fl.client import client_app, client_query, client_train
from romsim.fl.quiet import quiet_third_party

__all__ = ["client_app", "client_query", "client_train", "server_app", "server_main"]


def server_main(grid, context) -> None:
    from romsim.fl.runner import ServerLoop, runtime_from_run_config

    ServerLoop(grid, **runtime_from_run_config(context.run_config)).run()


def _make_server_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(server_main)
    return app


server_app = _make_server_app()
quiet_third_party()  # again, ahead of the filters importing flwr added
