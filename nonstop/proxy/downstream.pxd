# Compiled declarations for downstream.py (setup.py).

from nonstop.proxy.exchange cimport Exchange
from nonstop.proxy.http cimport RequestHead
from nonstop.proxy.state cimport ProxyState
from nonstop.proxy.upstream cimport UpstreamConnection


cdef class ClientConnection:
    cdef public object server, cfg, transport, parser, headers, reading, tunnel, upgrade_rest, wbuf, trust
    cdef public ProxyState state
    cdef public RequestHead last_head
    cdef public str client_ip
    cdef public bytes client_ip_b, url, fwd, last_req, scheme, resp_extra
    cdef public Py_ssize_t raw_head
    cdef public int phase, paused
    cdef public list queue
    cdef public bint write_paused, closed, lingering, special, front
    cdef public double deadline, read_timeout, header_timeout, idle_timeout
    cdef public Py_ssize_t max_header_bytes

    cpdef _dispatch(self, Exchange ex, RequestHead head)
    cpdef exchange_done(self, Exchange ex, bint close)
    cpdef write(self, bytes data)
