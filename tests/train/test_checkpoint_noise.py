"""A failed checkpoint save must end in the run's one-line error, not under
hundreds of lines of tracebacks from tensorstore threads whose event loop
orbax has already closed (CI once saw such a traceback split that line)."""

import subprocess
import sys
import textwrap

# The situation orbax is in when one array write of a save fails: the loop the
# writes were awaited on is closed while thirty tensorstore writes are in flight.
SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    import numpy as np
    import tensorstore as ts
    if sys.argv[1] == "quiet":
        from e5jax.train.checkpoint import _quiet_orphaned_loop_callbacks
        _quiet_orphaned_loop_callbacks()

    async def fail_first():
        await asyncio.sleep(0.01)
        raise ValueError("the first write failed")

    async def write(i):
        arr = np.ones((1000, 1000), np.float32)
        t = await ts.open({"driver": "zarr", "kvstore": f"file://{sys.argv[2]}/{i}/"}, create=True,
                          delete_existing=True, shape=arr.shape, dtype=ts.float32)
        await t.write(arr)

    async def main():
        await asyncio.gather(fail_first(), *[write(i) for i in range(30)])

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    except ValueError:
        pass
    loop.close()
    time.sleep(2)  # the writes finish, and call back into the closed loop

    class Other:
        def __del__(self):
            raise KeyError("other error")

    Other()  # an unraisable error of another kind
""")


def _stderr(mode, tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(tmp_path / mode)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stderr


def test_closed_loop_callbacks_are_silenced_and_other_errors_are_not(tmp_path):
    loud = _stderr("loud", tmp_path)
    assert loud.count("Event loop is closed") >= 10  # the situation is reproduced
    quiet = _stderr("quiet", tmp_path)
    assert "Event loop is closed" not in quiet, quiet[-2000:]
    assert "KeyError: 'other error'" in quiet  # any other report still reaches the user
