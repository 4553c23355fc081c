"""Work arrays: one name is one piece of memory per thread, grown when asked for more."""

import threading

import numpy as np

from vrex_edge.scratch import work


def test_a_name_reuses_its_memory_and_grows_when_needed() -> None:
    a = work("test.a", (4, 8))
    assert a.shape == (4, 8) and a.dtype == np.float32 and a.flags.c_contiguous
    b = work("test.a", (2, 8))
    assert np.shares_memory(a, b)
    c = work("test.a", (100, 8))  # more than it holds: a new, larger array
    assert c.shape == (100, 8) and not np.shares_memory(a, c)
    assert np.shares_memory(c, work("test.a", (3, 5)))
    d = work("test.a", (3, 5), np.int64)  # another dtype: its own array
    assert d.dtype == np.int64 and not np.shares_memory(c, d)
    assert not np.shares_memory(work("test.b", (3, 5)), work("test.c", (3, 5)))


def test_threads_get_their_own_arrays() -> None:
    mine = work("test.t", (16,))
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(work("test.t", (16,))))
    t.start()
    t.join()
    assert not np.shares_memory(mine, theirs[0])
