// Atomics on the mapping, for the C guest's own files (not public API): every shared word is read
// and written through these, with the memory order docs/LAYOUT.md names for it.
#ifndef DXATOMIC_H
#define DXATOMIC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define AT64(p) ((_Atomic uint64_t *)(void *)(p))
#define AT32(p) ((_Atomic uint32_t *)(void *)(p))
#define load64(p, order) atomic_load_explicit(AT64(p), order)
#define load32(p, order) atomic_load_explicit(AT32(p), order)
#define store64(p, v, order) atomic_store_explicit(AT64(p), (v), order)
#define store32(p, v, order) atomic_store_explicit(AT32(p), (v), order)
#define RELAXED memory_order_relaxed
#define ACQUIRE memory_order_acquire
#define RELEASE memory_order_release
#define SEQ_CST memory_order_seq_cst

static inline bool cas64(char *p, uint64_t expected, uint64_t desired, memory_order order) {
    return atomic_compare_exchange_strong_explicit(AT64(p), &expected, desired, order, ACQUIRE);
}

#endif
