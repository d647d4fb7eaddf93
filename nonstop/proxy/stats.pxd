# Compiled declarations for stats.py (setup.py): the hot path's counters as a C struct.

cdef class Counters:
    cdef public long long requests, proxy_errors, in_flight
    cdef public list by_class, counts
    cdef public double sum
