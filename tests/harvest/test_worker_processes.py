"""`map_in_processes`: order, early close, and a start method that is safe for
the process it runs in (a fork copies the locks other threads hold)."""

import subprocess
import sys
import threading

from e5jax.data.harvest import streams


def square(x: int) -> int:
    return x * x


def test_results_in_input_order_and_early_close():
    assert list(streams.map_in_processes(square, range(50), workers=2, batch=3, ahead=2)) == [x * x for x in range(50)]
    gen = streams.map_in_processes(square, iter(range(10_000)), workers=2)
    assert [next(gen) for _ in range(5)] == [0, 1, 4, 9, 16]
    gen.close()  # terminates the pool without draining the 10,000 inputs


def test_no_fork_while_other_threads_run():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert streams._start_method() != "fork"
        assert list(streams.map_in_processes(square, range(7), workers=2)) == [x * x for x in range(7)]
    finally:
        stop.set()
        t.join()


def test_fork_in_a_single_threaded_process():
    # pytest's own process may run threads (xdist, JAX); a fresh interpreter runs none.
    code = "from e5jax.data.harvest import streams; print(streams._start_method())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "fork"
