# Compiled declarations for exchange.py (setup.py).

from nonstop.proxy.downstream cimport ClientConnection
from nonstop.proxy.http cimport RequestHead, ResponseHead
from nonstop.proxy.state cimport Entry
from nonstop.proxy.upstream cimport UpstreamConnection


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
    cdef bytes _extra_lines(self)
