# Compiled declarations for downstream.py (setup.py).

from nonstop.proxy.http cimport RequestHead, ResponseHead
from nonstop.proxy.state cimport Entry, ProxyState
from nonstop.proxy.upstream cimport UpstreamConnection


cdef class Exchange


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


cdef class Exchange:
    cdef public ClientConnection conn
    cdef public RequestHead head
    cdef public object headers, buf, cookie, task
    cdef public Entry entry
    cdef public UpstreamConnection upstream
    cdef public ResponseHead resp
    cdef public tuple tried
    cdef public Py_ssize_t buf_size, body_len
    cdef public bint req_done, finished, counted, client_eof
    cdef public int status
    cdef public double started

    cpdef start(self)
    cpdef _attach(self, Entry entry)
    cpdef _bind(self, UpstreamConnection up)
    cpdef on_fast_response(self, UpstreamConnection up, bytes data, int status, Py_ssize_t end, long long length,
                           bytes chead)
    cpdef on_response_done(self, UpstreamConnection up)
