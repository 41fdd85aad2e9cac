// Counts heap allocations made by threads that opted in, by interposing malloc and friends.
// Test-only: linked into the test executable, whose definitions take precedence over libc's.
#ifndef CALLOCATIONCOUNTER_H
#define CALLOCATIONCOUNTER_H

#include <stdint.h>

/// Starts or stops counting the calling thread's allocations.
void AllocationCounter_countThisThread(int enabled);
/// Allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc) counted so far.
uint64_t AllocationCounter_count(void);

#endif
