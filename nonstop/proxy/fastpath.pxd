# Compiled declarations for fastpath.py (setup.py).

cimport cython

from nonstop.proxy.http cimport RequestHead


cdef bytes _TOKEN_T, _PATH_T, _HOST_T, _VALUE_T, _SPECIAL_FIRST
cdef frozenset _SPECIAL_NAMES
cdef tuple _FAST_METHODS
cdef unsigned int _SPECIAL_LENGTHS


@cython.locals(n=Py_ssize_t, i=Py_ssize_t, start=Py_ssize_t, name_end=Py_ssize_t, v=Py_ssize_t,
               v_end=Py_ssize_t, host_a=Py_ssize_t, host_b=Py_ssize_t, ka_a=Py_ssize_t, ka_b=Py_ssize_t,
               method=bytes, name=bytes, tail=bytes, h=RequestHead)
cpdef _scan_request(bytes data, bytes fwd)
