// The C guest's waits: the futex calls and the parker (see dxwait.h; Sources/DXCore/Wait/Parker.swift
// is the Swift one).
#define _GNU_SOURCE
#include "dxwait.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

// MARK: - Clock and futex

static struct timespec timespec_of(uint64_t ns) {
    return (struct timespec){(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
}

int dx_futex_wait(void *word, uint32_t expected, uint64_t timeout_ns) {
    struct timespec timeout = timespec_of(timeout_ns);
    return syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, NULL, 0) == 0 ? 0 : errno;
}

void dx_futex_wake(void *word, int count) {
    syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}

void dx_sleep_ns(uint64_t ns) {
    struct timespec request = timespec_of(ns), remaining;
    while (nanosleep(&request, &remaining) != 0 && errno == EINTR) request = remaining;
}

// MARK: - The parker ("The parker: dx's semaphore")

/// The futex half of a sleep: until a post or `timeout_ns`, re-armed with what remains after a
/// return that was no post. Never spins on a failing futex call.
static enum dx_park_outcome wait_for_post(char *word, uint64_t timeout_ns) {
    uint64_t deadline = now_ns() + timeout_ns, remaining = timeout_ns;
    for (;;) {
        int rc = dx_futex_wait(word, 0, remaining);
        // Acquire: pairs with the poster's release store of 1.
        if (load32(word, ACQUIRE) != 0) return DX_PARK_POSTED;
        if (rc == ETIMEDOUT) return DX_PARK_TIMED_OUT;
        // The word was not 0 when the kernel looked: a post happened (and was flipped back).
        if (rc == EAGAIN) return DX_PARK_POSTED;
        if (rc != 0 && rc != EINTR) {
            // EFAULT or anything else the kernel says about a word we cannot wait on: wait out the
            // time without it, so that the caller's loop does not turn into a spin.
            dx_sleep_ns(remaining);
            return DX_PARK_TIMED_OUT;
        }
        uint64_t now = now_ns();  // woken without a post, or a signal: sleep on
        if (now >= deadline) return DX_PARK_TIMED_OUT;
        remaining = deadline - now;
    }
}

enum dx_park_outcome dx_park(dx_parker p, const char *watched, uint64_t value, uint64_t timeout_ns) {
    // Relaxed: ordered before any publisher can see the flag by the seq-cst store below.
    store32(p.word, 0, RELAXED);
    // Seq-cst, as is the re-check: with the publisher's seq-cst store of what it publishes and its
    // seq-cst load of this flag, either our re-check sees the publication or it sees the flag.
    store32(p.flag, 1, SEQ_CST);
    enum dx_park_outcome outcome =
        load64(watched, SEQ_CST) == value ? DX_PARK_READY : wait_for_post(p.word, timeout_ns);
    store32(p.flag, 0, RELAXED);  // a post that comes anyway costs the next sleep one spurious return
    return outcome;
}

bool dx_wake_if_sleeping(dx_parker p) {
    uint32_t one = 1;
    // Acquire-release (failure acquire): one post per sleep.
    if (!atomic_compare_exchange_strong_explicit(AT32(p.flag), &one, 0, memory_order_acq_rel, ACQUIRE)) return false;
    // Release: pairs with the sleeper's acquire load of the word.
    store32(p.word, 1, RELEASE);
    dx_futex_wake(p.word, 1);
    return true;
}
