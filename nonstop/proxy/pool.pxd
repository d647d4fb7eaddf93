# Compiled declarations for pool.py (setup.py).

cdef class Pool:
    cdef public list _idle
    cdef public Py_ssize_t max_idle
