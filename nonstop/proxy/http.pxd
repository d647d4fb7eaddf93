# Compiled declarations for http.py (setup.py).

cdef class RequestHead:
    cdef public bytes method, upstream_head
    cdef public str client
    cdef public object content_length, cookie
    cdef public bint keep_alive, chunked, upgrade, no_body, http10


cdef class ResponseHead:
    cdef public bytes head
    cdef public str body
    cdef public bint chunked_out, close, upstream_reusable, tunnel, interim, splice
    cdef public long long length
