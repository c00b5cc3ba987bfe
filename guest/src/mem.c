/* mem.c: memcpy and friends (the guest has no libc) and the heap allocator.
 *
 * The heap runs from __heap_base (placed by the linker after the data and the stack)
 * to heap_end and grows with memory.grow. Every block starts with a 16-byte header, so
 * payloads stay 16-byte aligned. Free blocks sit in one address-ordered list; realm_alloc
 * takes the first that fits (splitting off the rest), realm_free merges a block with
 * free neighbours, so a caller that allocates the same sizes again (one generate call
 * after another) reuses the same memory instead of growing the heap. A failed
 * memory.grow makes realm_alloc return 0; it never traps.
 */
#include "guest.h"

/* ---- memory functions ------------------------------------------------------------
 * The compiler may turn loops (and struct copies) into calls to these, so they exist
 * even with -fno-builtin. Word copies when both sides are aligned. */

void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    if ((((uintptr_t)d | (uintptr_t)s) & 3) == 0) {
        for (; n >= 4; n -= 4, d += 4, s += 4) *(uint32_t *)d = *(const uint32_t *)s;
    }
    while (n--) *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d == s || n == 0) return dst;
    if (d < s || d >= s + n) return memcpy(dst, src, n);
    while (n--) d[n] = s[n]; /* overlapping, dst after src: copy backwards */
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    uint8_t *d = dst;
    if (((uintptr_t)d & 3) == 0) {
        uint32_t w = (uint8_t)c * 0x01010101u;
        for (; n >= 4; n -= 4, d += 4) *(uint32_t *)d = w;
    }
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

/* ---- bounds --------------------------------------------------------------------- */

#define PAGE 65536u

static uint64_t memory_bytes(void) { return (uint64_t)__builtin_wasm_memory_size(0) * PAGE; }

int mem_in_bounds(uint32_t addr, uint64_t len) { return (uint64_t)addr + len <= memory_bytes(); }

/* ---- the allocator -------------------------------------------------------------- */

#define ALIGN 16u
#define HEADER 16u
#define MAGIC_USED 0x55534544u /* "USED" */
#define MAGIC_FREE 0x46524545u /* "FREE" */

typedef struct block {
    uint32_t size;  /* bytes, header included, a multiple of ALIGN */
    uint32_t magic; /* MAGIC_USED or MAGIC_FREE */
    uint32_t next;  /* free blocks: the next free block's address, 0 at the end */
    uint32_t pad;
} block_t;
_Static_assert(sizeof(block_t) == HEADER, "the block header is 16 bytes");

extern unsigned char __heap_base; /* defined by wasm-ld */

static uint32_t heap_start, heap_end; /* [heap_start, heap_end): carved into blocks */
static uint32_t free_head;            /* the lowest free block, 0 when none */
static uint32_t bytes_in_use;         /* sizes of the used blocks, headers included */

#define BLOCK(a) ((block_t *)PTR(a))

static void heap_init(void) {
    if (heap_start) return;
    heap_start = (ADDR(&__heap_base) + ALIGN - 1) & ~(ALIGN - 1);
    heap_end = heap_start;
}

/* Make the memory at least `end` bytes long. */
static int ensure_memory(uint64_t end) {
    uint64_t have = memory_bytes();
    if (end <= have) return 1;
    uint64_t pages = (end - have + PAGE - 1) / PAGE;
    return __builtin_wasm_memory_grow(0, (size_t)pages) != (size_t)-1;
}

void *realm_alloc(uint32_t n) EXPORT(realm_alloc);
void *realm_alloc(uint32_t n) {
    heap_init();
    if (n > 0x7FFFFFFFu) return 0; /* no wasm32 heap could hold it */
    uint32_t need = ((n ? n : 1) + ALIGN - 1) / ALIGN * ALIGN + HEADER;

    /* first fit; remember the last free block in case it borders heap_end */
    uint32_t prev = 0, cur = free_head, last_prev = 0;
    while (cur) {
        block_t *b = BLOCK(cur);
        if (b->size >= need) {
            uint32_t rest = b->size - need;
            uint32_t next = b->next;
            if (rest >= HEADER + ALIGN) { /* split: the tail stays free */
                block_t *t = BLOCK(cur + need);
                t->size = rest;
                t->magic = MAGIC_FREE;
                t->next = next;
                next = cur + need;
                b->size = need;
            }
            if (prev) BLOCK(prev)->next = next;
            else free_head = next;
            b->magic = MAGIC_USED;
            b->next = 0;
            bytes_in_use += b->size;
            return PTR(cur + HEADER);
        }
        last_prev = prev;
        prev = cur;
        cur = b->next;
    }

    /* nothing fits: grow the heap, starting inside the last free block if it ends
     * at heap_end */
    uint32_t last = prev;
    uint32_t start = heap_end;
    if (last && last + BLOCK(last)->size == heap_end) start = last;
    uint64_t end = (uint64_t)start + need;
    if (end > 0xFFFFFFFFull || !ensure_memory(end)) return 0;
    if (start == last) { /* take the last free block off the list */
        if (last_prev) BLOCK(last_prev)->next = 0;
        else free_head = 0;
    }
    heap_end = (uint32_t)end;
    block_t *b = BLOCK(start);
    b->size = need;
    b->magic = MAGIC_USED;
    b->next = 0;
    bytes_in_use += need;
    return PTR(start + HEADER);
}

void realm_free(void *p) EXPORT(realm_free);
void realm_free(void *p) {
    uint32_t a = ADDR(p);
    heap_init();
    if (!a || (a & (ALIGN - 1)) || a < heap_start + HEADER || a > heap_end) return;
    uint32_t addr = a - HEADER;
    block_t *b = BLOCK(addr);
    if (b->magic != MAGIC_USED || b->size < HEADER || b->size > heap_end - addr) return;
    bytes_in_use -= b->size;
    b->magic = MAGIC_FREE;

    /* insert in address order, merging with the neighbours it touches */
    uint32_t prev = 0, next = free_head;
    while (next && next < addr) {
        prev = next;
        next = BLOCK(next)->next;
    }
    if (next && addr + b->size == next) {
        b->size += BLOCK(next)->size;
        next = BLOCK(next)->next;
    }
    b->next = next;
    if (prev && prev + BLOCK(prev)->size == addr) {
        BLOCK(prev)->size += b->size;
        BLOCK(prev)->next = next;
    } else if (prev) {
        BLOCK(prev)->next = addr;
    } else {
        free_head = addr;
    }
}

uint32_t realm_heap_bytes(void) EXPORT(realm_heap_bytes);
uint32_t realm_heap_bytes(void) { return bytes_in_use; }
