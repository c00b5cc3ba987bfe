/* guest.h: what the guest's source files share (no libc: everything is here). */
#ifndef GUEST_H
#define GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "realm.h"

/* Mark a function as an export of the module under its own name. */
#define EXPORT(name) __attribute__((export_name(#name)))

/* A guest pointer as the u32 byte offset that the host ABI passes around. */
#define ADDR(p) ((uint32_t)(uintptr_t)(p))
#define PTR(a) ((void *)(uintptr_t)(a))

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- mem.c: the C library's memory functions and the allocator ---------------- */

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

void *realm_alloc(uint32_t n); /* 16-byte aligned; 0 when memory cannot grow */
void realm_free(void *p);
uint32_t realm_heap_bytes(void);

/* 1 when [addr, addr + len) lies inside the linear memory. */
int mem_in_bounds(uint32_t addr, uint64_t len);

/* ---- log.c: log lines through realm_log ---------------------------------------- */

#define LOG_DEBUG 0
#define LOG_INFO 1
#define LOG_WARNING 2
#define LOG_ERROR 3

/* Logs "<what>: <detail> (<code>)"; detail may be 0. Returns code. */
int32_t guest_log_error(const char *what, const char *detail, int32_t code);
/* Logs "<what> <num> <detail> (<code>)"; detail may be 0. Returns code. */
int32_t guest_log_error_num(const char *what, uint32_t num, const char *detail, int32_t code);

/* ---- mathx.c ------------------------------------------------------------------- */

double gexp(double x); /* e^x, a few ulp; 0 for -inf, +inf for +inf, NaN for NaN */

static inline int is_nan(double x) { return x != x; }

/* ---- utf8.c -------------------------------------------------------------------- */

/* Byte length of the well-formed UTF-8 character at s[0 .. n), or 1 when s[0] does
 * not start one (an invalid byte is a symbol of its own). n >= 1. */
uint32_t utf8_char_len(const uint8_t *s, uint32_t n);

/* How many bytes at the end of s[0 .. n) are the start of a well-formed character
 * that is still missing bytes (0 to 3): the part a stream must hold back. */
uint32_t utf8_incomplete_tail(const uint8_t *s, uint32_t n);

#endif /* GUEST_H */
