/* log.c: formatted log lines through the host's realm_log. */
#include "guest.h"

typedef struct {
    char buf[160];
    uint32_t len;
} line_t;

static void put_str(line_t *l, const char *s) {
    while (s && *s && l->len < sizeof(l->buf)) l->buf[l->len++] = *s++;
}

static void put_digits(line_t *l, uint32_t u, int negative) {
    char tmp[12];
    uint32_t n = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (negative) tmp[n++] = '-';
    while (n && l->len < sizeof(l->buf)) l->buf[l->len++] = tmp[--n];
}

static void put_int(line_t *l, int32_t v) { put_digits(l, v < 0 ? 0u - (uint32_t)v : (uint32_t)v, v < 0); }

/* Ends the line with " (<code>)", logs it as an error and returns code. */
static int32_t log_with_code(line_t *l, int32_t code) {
    put_str(l, " (");
    put_int(l, code);
    put_str(l, ")");
    realm_log(LOG_ERROR, ADDR(l->buf), l->len);
    return code;
}

int32_t guest_log_error(const char *what, const char *detail, int32_t code) {
    line_t l;
    l.len = 0;
    put_str(&l, what);
    if (detail) {
        put_str(&l, ": ");
        put_str(&l, detail);
    }
    return log_with_code(&l, code);
}

int32_t guest_log_error_num(const char *what, uint32_t num, const char *detail, int32_t code) {
    line_t l;
    l.len = 0;
    put_str(&l, what);
    put_str(&l, " ");
    put_digits(&l, num, 0);
    if (detail) {
        put_str(&l, " ");
        put_str(&l, detail);
    }
    return log_with_code(&l, code);
}
