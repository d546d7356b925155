# Jupyter server configuration for the browser tests ONLY (tests/browser/conftest.py passes it with --config).
# It switches off every protection (no token, no XSRF check), so never use it for a real server.
import os

from jupyterlab.galata import configure_jupyter_server

c = get_config()  # noqa: F821  (provided by traitlets when the file is loaded)

# token '', XSRF off, window.jupyterapp exposed, root_dir = $JUPYTERLAB_GALATA_ROOT_DIR, temporary workspaces
configure_jupyter_server(c)

c.ServerApp.ip = "127.0.0.1"
c.ServerApp.allow_root = True  # CI runs as root; jupyter refuses to start as root without this
c.ServerApp.open_browser = False
c.ServerApp.port_retries = 0  # the fixture picks a free port and retries itself
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
if os.environ.get("RECON_KIT_LAB_WORKSPACES"):  # keep the workspaces inside the fixture's temporary folder
    c.LabApp.workspaces_dir = os.environ["RECON_KIT_LAB_WORKSPACES"]
