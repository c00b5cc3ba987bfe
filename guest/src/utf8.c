/* utf8.c: where UTF-8 characters start and end. */
#include "guest.h"

static int is_cont(uint8_t b) { return (b & 0xC0) == 0x80; }

/* The length a lead byte announces (0: not a lead byte), and the range its second
 * byte must fall in (which rules out overlong forms, surrogates and > U+10FFFF). */
static uint32_t lead_len(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0) *lo = 0xA0;
        if (b == 0xED) *hi = 0x9F;
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0) *lo = 0x90;
        if (b == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

uint32_t utf8_char_len(const uint8_t *s, uint32_t n) {
    if (s[0] < 0x80) return 1;
    uint8_t lo, hi;
    uint32_t len = lead_len(s[0], &lo, &hi);
    if (len == 0 || len > n) return 1;
    if (s[1] < lo || s[1] > hi) return 1;
    for (uint32_t i = 2; i < len; i++) {
        if (!is_cont(s[i])) return 1;
    }
    return len;
}

uint32_t utf8_incomplete_tail(const uint8_t *s, uint32_t n) {
    /* the lead byte can be at most 3 bytes back */
    for (uint32_t back = 1; back <= 3 && back <= n; back++) {
        uint8_t b = s[n - back];
        if (is_cont(b)) continue;
        uint8_t lo, hi;
        uint32_t len = lead_len(b, &lo, &hi);
        if (len <= back) return 0; /* ASCII, invalid, or already complete */
        if (back >= 2 && (s[n - back + 1] < lo || s[n - back + 1] > hi)) return 0;
        return back;
    }
    return 0;
}
