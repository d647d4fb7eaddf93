# Compiled declarations for upstream.py (setup.py).

from nonstop.proxy.state cimport TargetState


cdef class UpstreamConnection:
    cdef public TargetState target
    cdef public object transport, parser, exchange, _poll
    cdef public bytes hbuf, chunk
    cdef public double idle_since
    cdef public bint closed, tunnel, read_paused, splice, dirty, raw_body, fresh
    cdef public int status
    cdef public Py_ssize_t hstart, base, body_from
    cdef public long long left

    cpdef bind(self, exchange, bytes data)
