/* realm_errors.h: the host ABI's error codes (DESIGN.md), defined here only.
 *
 * Every realm_* import returns >= 0 on success and one of these on failure. The C
 * kernels return them, the native imports (realm_ext/_host_native.pyx) pass them on,
 * guest/include/realm.h includes this file for guest authors, and realm_ext/abi.py's
 * ERR_* constants are checked against it (tests/test_abi_doc.py). Plain C, no
 * includes: it compiles for the host, for wasm32 guests and under NVRTC alike.
 */
#ifndef REALM_ERRORS_H
#define REALM_ERRORS_H

#define REALM_OK 0
#define REALM_ERR_INVALID (-1)   /* invalid argument */
#define REALM_ERR_BOUNDS (-2)    /* pointer or length outside guest memory */
#define REALM_ERR_MODEL (-3)     /* model unknown or not granted to this guest */
#define REALM_ERR_KV (-4)        /* KV cache unknown or not owned by this guest */
#define REALM_ERR_RANGE (-5)     /* layer or position out of range */
#define REALM_ERR_ROWS (-6)      /* length not a whole number of rows */
#define REALM_ERR_NOMEM (-7)     /* out of host or device memory */
#define REALM_ERR_CANCELLED (-8) /* cancelled (e.g. the host's stream was closed) */
#define REALM_ERR_INTERNAL (-9)  /* internal error; see realm_last_error */

#endif
