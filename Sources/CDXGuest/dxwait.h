// The C guest's waits (not public API), as in Sources/DXCore/Wait: the parker ("The parker: dx's
// semaphore" in docs/LAYOUT.md, Parker.swift) and the spin step (SpinWait.swift), with the clock and
// futex calls under them. Include it after defining _GNU_SOURCE, as dxguest.c and dxwait.c do.
#ifndef DXWAIT_H
#define DXWAIT_H

#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "dxatomic.h"

#define DX_INTERNAL __attribute__((visibility("hidden")))

// MARK: - Clock and futex

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/// One FUTEX_WAIT while the word holds `expected`, for at most `timeout_ns` (relative, so measured on
/// CLOCK_MONOTONIC). The shared kind, without FUTEX_PRIVATE_FLAG: the word is in a mapping other
/// processes share, and a private wait would never see their wakes. Returns 0 or the errno.
DX_INTERNAL int dx_futex_wait(void *word, uint32_t expected, uint64_t timeout_ns);
/// FUTEX_WAKE of up to `count` waiters (the shared kind).
DX_INTERNAL void dx_futex_wake(void *word, int count);
/// Sleeps `ns` without a futex (resumed after a signal).
DX_INTERNAL void dx_sleep_ns(uint64_t ns);

// MARK: - The parker ("The parker: dx's semaphore")

/// A binary semaphore of two u32 words in the region: the sleeping flag and the futex word. Garbage
/// written into them costs at most one spurious return per sleep.
typedef struct {
    char *flag, *word;
} dx_parker;

enum dx_park_outcome { DX_PARK_READY, DX_PARK_POSTED, DX_PARK_TIMED_OUT };

/// Sleeper side: sleeps until the u64 at `watched` equals `value` (as the publisher stores it,
/// seq-cst), a post, or `timeout_ns`. The caller checks its condition again afterwards (acquire),
/// whatever the outcome.
DX_INTERNAL enum dx_park_outcome dx_park(dx_parker p, const char *watched, uint64_t value, uint64_t timeout_ns);

/// Clears the sleeping flag by CAS and, if that succeeded, posts. Returns whether it posted.
DX_INTERNAL bool dx_wake_if_sleeping(dx_parker p);

/// Publisher side, after the seq-cst store of what it publishes: posts when the sleeper announced a
/// sleep. Returns whether it posted; of racing publishers only the one whose CAS clears the flag does.
/// Inline, as the Swift one is: every call makes this check, and almost always finds nobody asleep.
static inline bool dx_unpark(dx_parker p) {
    // Seq-cst: pairs with the sleeper's seq-cst store of the flag (see dx_park).
    if (load32(p.flag, SEQ_CST) == 0) return false;
    return dx_wake_if_sleeping(p);
}

// MARK: - The spin step (SpinWait.swift)

/// The spin half of a wait: one step per unsuccessful check, with the CPU-relax hint and a
/// sched_yield every `yield_every` steps (0: never), until `budget` steps; then the caller parks.
/// Inline, as the Swift one is: a step is a few instructions and a pause, taken millions of times.
typedef struct {
    uint32_t spins;  ///< steps taken
    uint32_t until_yield, budget, yield_every;
} dx_spin_wait;

enum dx_spin_step { DX_SPIN_SPUN, DX_SPIN_YIELDED, DX_SPIN_EXHAUSTED };

static inline dx_spin_wait dx_spin_wait_start(uint32_t budget, uint32_t yield_every) {
    return (dx_spin_wait){.spins = 0, .until_yield = yield_every, .budget = budget, .yield_every = yield_every};
}

/// One idle step: relax (and yield every `yield_every` steps), or DX_SPIN_EXHAUSTED when the budget
/// is spent.
static inline enum dx_spin_step dx_spin_step(dx_spin_wait *w) {
    if (++w->spins >= w->budget) return DX_SPIN_EXHAUSTED;
    cpu_relax();
    if (w->until_yield != 0 && --w->until_yield == 0) {
        w->until_yield = w->yield_every;
        sched_yield();
        return DX_SPIN_YIELDED;
    }
    return DX_SPIN_SPUN;
}

#endif
