/* unicode.c: codepoint classes and llama.cpp's UTF-8 decoding. */
#include "unicode.h"

uint32_t unicode_class(uint32_t cpt) {
    if (cpt > 0x10FFFF) return UNI_OTHER;
    /* the last run whose first codepoint is <= cpt */
    uint32_t key = cpt << 2 | 3, lo = 0, hi = unicode_class_runs_len;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (unicode_class_runs[mid] <= key) lo = mid;
        else hi = mid;
    }
    return unicode_class_runs[lo] & 3;
}

uint32_t unicode_decode(const uint8_t *s, uint32_t n, uint32_t *cpt) {
    uint8_t b = s[0];
    uint32_t len = b < 0x80 ? 1 : b < 0xC0 ? 0 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : b < 0xF8 ? 4 : 0;
    if (len == 0 || len > n) {
        *cpt = 0xFFFD;
        return 1;
    }
    uint32_t v = len == 1 ? b : b & (0xFFu >> (len + 1));
    for (uint32_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cpt = 0xFFFD;
            return 1;
        }
        v = v << 6 | (s[i] & 0x3F);
    }
    *cpt = v;
    return len;
}

uint32_t unicode_encode(uint32_t cpt, uint8_t *out) {
    if (cpt < 0x80) {
        out[0] = (uint8_t)cpt;
        return 1;
    }
    if (cpt < 0x800) {
        out[0] = (uint8_t)(0xC0 | cpt >> 6);
        out[1] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cpt >> 12);
        out[1] = (uint8_t)(0x80 | (cpt >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 3;
    }
    if (cpt <= 0x10FFFF) {
        out[0] = (uint8_t)(0xF0 | cpt >> 18);
        out[1] = (uint8_t)(0x80 | (cpt >> 12 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cpt >> 6 & 0x3F));
        out[3] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 4;
    }
    return 0;
}
