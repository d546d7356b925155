"""nvdiffrast's plugin build: processes started together wait for one build; a killed build blocks nothing."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from recon_kit.render.nvdiffrast_backend import plugin_build_lock

HOLD = textwrap.dedent("""
    import sys, time
    from recon_kit.render.nvdiffrast_backend import plugin_build_lock
    with plugin_build_lock(sys.argv[1]):
        (__import__("pathlib").Path(sys.argv[1]) / "lock").write_text("")   # torch's baton, mid-build
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(build_dir, seconds):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(build_dir), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_second_process_waits_for_the_build(tmp_path):
    build = tmp_path / "ext" / "nvdiffrast_plugin"
    build.mkdir(parents=True)
    proc = _holder(build, 1.5)
    t0 = time.monotonic()
    with plugin_build_lock(build):
        waited = time.monotonic() - t0
        assert not (build / "lock").exists()       # the builder's leftover baton is cleared once we hold the lock
    assert waited > 0.5 and proc.wait(10) == 0


def test_a_killed_build_leaves_nothing_that_blocks(tmp_path):
    build = tmp_path / "ext" / "nvdiffrast_plugin"
    build.mkdir(parents=True)
    proc = _holder(build, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert (build / "lock").exists()
    t0 = time.monotonic()
    with plugin_build_lock(build):
        assert not (build / "lock").exists()
    assert time.monotonic() - t0 < 5
