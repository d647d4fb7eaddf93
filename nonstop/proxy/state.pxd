# Compiled declarations for state.py (setup.py): what the hot path reads per request, as C structs.

from nonstop.proxy.pool cimport Pool
from nonstop.proxy.stats cimport Counters


cdef class TargetState:
    cdef public str addr, host
    cdef public object port
    cdef public long long in_flight
    cdef public set tunnels
    cdef public Pool pool
    cdef public bint listed


cdef class ReleaseRoute:
    cdef public str name
    cdef public bytes header
    cdef public list entries
    cdef public Py_ssize_t _rr


cdef class Entry:
    cdef public TargetState target
    cdef public Counters counters
    cdef public bint draining
    cdef public ReleaseRoute release


cdef class ProxyState:
    cdef public object table, split, unrouted, _changed, rand
    cdef public list routes
    cdef public dict targets, pairs
    cdef public long long rejected
    cdef public Py_ssize_t max_idle
    cdef public double started_at, now
    cdef public bint closing
    cdef public Entry fast
