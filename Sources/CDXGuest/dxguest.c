// The guest side of a dx region, written from docs/LAYOUT.md (layout version 1).
// Section names below ("Validating", "Claim and release", "One call", "Turns") are that document's.
#define _GNU_SOURCE
#include "dxguest.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

// MARK: - The layout (docs/LAYOUT.md)

enum {
    HEADER_SIZE = 8192,
    BLOCK = 128,
    MAX_LANES = 1024,
    MAX_SLOT = 16 * 1024 * 1024,
    MAX_WORKERS = 16,
    MAX_RAW = 16,

    H_MAGIC = 0, H_VERSION = 8, H_HEADER_SIZE = 12, H_STRIDE = 16, H_LANES = 20, H_CAPACITY = 24,
    H_WORKERS = 28, H_REGION_SIZE = 32, H_PID = 40, H_HANDLER = 44, H_START = 48, H_STATE = 128,
    H_HEARTBEAT = 136, H_LANES_OFFSET = 256, H_RAW_OFFSET = 264, H_RAW_COUNT = 272,
    H_DOORBELLS = 1024, DOORBELL_SLEEPING = 0, DOORBELL_SEM = 8, DOORBELL_WORKER_CPU = 64,
    H_TURNSTILES = 4096, TURNSTILE_STRIDE = 256, TURN_NEXT = 0, TURN_SERVING = 8, TURN_LEASE = 16,
    TURN_WAKE = 128, TURN_WAKE_COUNT = 32,

    L_REQ_SEQ = 0, L_REQ_LEN = 8, L_OWNER = 16, L_OWNER_START = 24, L_RESP_SEQ = 128, L_RESP_LEN = 136,
    L_STATUS = 140, L_SLEEPING = 256, L_SEM = 264, L_COUNTERS = 512, L_PAYLOAD = 768,

    C_CALLS = 0, C_SPIN_WINS = 8, C_YIELDS = 16, C_SLEEPS = 24, C_DOORBELLS = 32, C_ERRORS = 40,
    C_TURN_WAITS = 48,

    STATE_READY = 1,
    CALLS_BETWEEN_TURN_CHECKS = 64,
};
static const uint64_t MAGIC = 0x4E4F494745525844ull;  // "DXREGION" read as little-endian
static const uint64_t HOST_STALE_NS = 300000000ull;

// MARK: - Atomics on the mapping

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

static bool cas64(char *p, uint64_t expected, uint64_t desired, memory_order order) {
    return atomic_compare_exchange_strong_explicit(AT64(p), &expected, desired, order, ACQUIRE);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

// MARK: - Small system helpers

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/// Field `index` (1-based, as in proc(5)) of /proc/<pid>/stat; the state letter for field 3.
static bool proc_stat_field(pid_t pid, int index, unsigned long long *value, char *state) {
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n;
    do { n = read(fd, text, sizeof text - 1); } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return false;
    text[n] = 0;
    char *cursor = strrchr(text, ')');  // the command name may hold spaces and parentheses
    if (!cursor) return false;
    cursor += 1;
    for (int field = 3; field <= index; field++) {
        while (*cursor == ' ') cursor++;
        if (!*cursor) return false;
        if (field == index) {
            if (state) *state = *cursor;
            if (value) *value = strtoull(cursor, NULL, 10);
            return true;
        }
        while (*cursor && *cursor != ' ') cursor++;
    }
    return false;
}

static uint64_t start_time(pid_t pid) {
    unsigned long long ticks = 0;
    return proc_stat_field(pid, 22, &ticks, NULL) ? ticks : 0;
}

/// Alive and not a zombie.
static bool process_alive(pid_t pid) {
    if (pid <= 0) return false;
    if (kill(pid, 0) != 0 && errno != EPERM) return false;
    char state = 0;
    return proc_stat_field(pid, 3, NULL, &state) && state != 'Z' && state != 'X';
}

static int futex_wait(void *word, uint32_t expected, uint64_t timeout_ns) {
    struct timespec timeout = {(time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull)};
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, NULL, 0);
}

static void futex_wake(void *word) {
    syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

static void sem_wait_bounded(sem_t *sem, uint64_t timeout_ns) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    uint64_t ns = (uint64_t)deadline.tv_nsec + timeout_ns;
    deadline.tv_sec += (time_t)(ns / 1000000000ull);
    deadline.tv_nsec = (long)(ns % 1000000000ull);
    while (sem_clockwait(sem, CLOCK_MONOTONIC, &deadline) != 0 && errno == EINTR) {}
}

// MARK: - Region

struct dx_region {
    char *base;
    size_t mapped;
    uint32_t lane_count, capacity, stride, workers, handler;
    pid_t host_pid;
    uint64_t host_start;
    pid_t own_pid;
    uint64_t own_start;
};

static _Thread_local uint32_t found_version;

uint32_t dx_last_found_version(void) { return found_version; }

static bool valid_name(const char *name) {
    size_t length = strlen(name);
    if (length < 1 || length > 200 || name[0] == '.') return false;
    for (size_t i = 0; i < length; i++) {
        char c = name[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '.' ||
                  c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

static uint64_t stride_for(uint64_t capacity) { return (L_PAYLOAD + capacity + BLOCK - 1) / BLOCK * BLOCK; }

/// The header's checks ("Validating (guest)"), on private copies.
static int validate(dx_region *r, size_t object_size) {
    char *h = r->base;
    uint64_t magic = load64(h + H_MAGIC, ACQUIRE);  // pairs with the host's release store, made last
    if (magic == 0) return DX_E_NOT_READY;
    if (magic != MAGIC) return DX_E_NOT_DX;
    uint32_t version = load32(h + H_VERSION, RELAXED);
    if (version != DX_LAYOUT_VERSION) {
        found_version = version;
        return DX_E_VERSION;
    }
    uint64_t lanes = load32(h + H_LANES, RELAXED), capacity = load32(h + H_CAPACITY, RELAXED);
    uint64_t stride = load32(h + H_STRIDE, RELAXED), workers = load32(h + H_WORKERS, RELAXED);
    uint64_t raw = load32(h + H_RAW_COUNT, RELAXED), size = load64(h + H_REGION_SIZE, RELAXED);
    if (load32(h + H_HEADER_SIZE, RELAXED) != HEADER_SIZE) return DX_E_SIZE;
    if (lanes < 1 || lanes > MAX_LANES || capacity < 1 || capacity > MAX_SLOT) return DX_E_SIZE;
    if (stride != stride_for(capacity)) return DX_E_SIZE;
    if (workers < 1 || workers > MAX_WORKERS || workers > lanes) return DX_E_SIZE;
    if (raw > MAX_RAW || raw > lanes) return DX_E_SIZE;
    uint64_t expected = HEADER_SIZE + (lanes + raw) * stride;
    if (size != expected || expected > object_size) return DX_E_SIZE;
    if (load64(h + H_LANES_OFFSET, RELAXED) != HEADER_SIZE) return DX_E_SIZE;
    if (load64(h + H_RAW_OFFSET, RELAXED) != HEADER_SIZE + lanes * stride) return DX_E_SIZE;
    r->lane_count = (uint32_t)lanes;
    r->capacity = (uint32_t)capacity;
    r->stride = (uint32_t)stride;
    r->workers = (uint32_t)workers;
    r->handler = load32(h + H_HANDLER, RELAXED);
    r->host_pid = (pid_t)load32(h + H_PID, RELAXED);
    r->host_start = load64(h + H_START, RELAXED);
    return DX_OK;
}

/// Why the host cannot answer, or DX_OK while it can.
static int host_problem(const dx_region *r) {
    if (load32(r->base + H_STATE, ACQUIRE) != STATE_READY) return DX_E_SHUTDOWN;
    uint64_t now = now_ns(), beat = load64(r->base + H_HEARTBEAT, RELAXED);
    if (now > beat && now - beat > HOST_STALE_NS &&
        (!process_alive(r->host_pid) || start_time(r->host_pid) != r->host_start))
        return DX_E_HOST_GONE;
    return DX_OK;
}

int dx_attach(const char *name, dx_region **out) {
    if (!name || !out) return DX_E_ARGUMENT;
    *out = NULL;
    found_version = 0;
    if (!valid_name(name)) return DX_E_INVALID_NAME;
    char object[256];
    snprintf(object, sizeof object, "/dx.%s", name);
    int fd = shm_open(object, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        if (errno == ENOENT) return DX_E_NO_REGION;
        if (errno == EACCES || errno == EPERM) return DX_E_PERMISSION;
        return DX_E_SYSTEM;
    }
    struct stat info;
    if (fstat(fd, &info) != 0) {
        close(fd);
        return DX_E_SYSTEM;
    }
    if (info.st_size < HEADER_SIZE) {
        close(fd);
        return DX_E_NOT_READY;
    }
    size_t size = (size_t)info.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) return DX_E_SYSTEM;
    dx_region *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(base, size);
        return DX_E_SYSTEM;
    }
    r->base = base;
    r->mapped = size;
    int rc = validate(r, size);
    if (rc == DX_OK) rc = host_problem(r);
    if (rc != DX_OK) {
        dx_detach(r);
        return rc;
    }
    r->own_pid = getpid();
    r->own_start = start_time(r->own_pid);
    *out = r;
    return DX_OK;
}

void dx_detach(dx_region *r) {
    if (!r) return;
    munmap(r->base, r->mapped);
    free(r);
}

size_t dx_region_lane_count(const dx_region *r) { return r->lane_count; }
size_t dx_region_capacity(const dx_region *r) { return r->capacity; }
uint32_t dx_region_handler(const dx_region *r) { return r->handler; }

// MARK: - Wait presets

/// What one spin (an acquire load and the CPU-relax hint) costs here: the median of five timed
/// runs of 20,000 spins, measured once per process.
static double ns_per_spin;
static pthread_once_t calibrated = PTHREAD_ONCE_INIT;

static void calibrate(void) {
    _Atomic uint64_t word = 0;
    double samples[5];
    for (int run = 0; run < 5; run++) {
        uint64_t start = now_ns();
        for (int i = 0; i < 20000; i++) {
            if (atomic_load_explicit(&word, ACQUIRE) == 1) break;
            cpu_relax();
        }
        samples[run] = (double)(now_ns() - start) / 20000;
    }
    for (int i = 1; i < 5; i++)  // insertion sort of five
        for (int j = i; j > 0 && samples[j] < samples[j - 1]; j--) {
            double swap = samples[j];
            samples[j] = samples[j - 1];
            samples[j - 1] = swap;
        }
    ns_per_spin = samples[2] > 1 ? samples[2] : 1;
}

static uint32_t spins_for(double ns) {
    double spins = ns / ns_per_spin;
    return (uint32_t)(spins < 100 ? 100 : spins > 1000000 ? 1000000 : spins);
}

dx_wait dx_wait_auto(void) {
    pthread_once(&calibrated, calibrate);
    dx_wait wait = dx_wait_fair();
    wait.min_spins = spins_for(50000);
    wait.max_spins = spins_for(500000);
    wait.start_spins = spins_for(125000);
    wait.avoid_worker_cpu = 1;
    return wait;
}

dx_wait dx_wait_fair(void) {
    return (dx_wait){.min_spins = 2000, .max_spins = 20000, .start_spins = 5000, .yield_every = 128,
                     .sleep_timeout_ns = 50000000, .turn_calls = 4096, .turn_quantum_ns = 4000000};
}

dx_wait dx_wait_balanced(void) {
    return (dx_wait){.min_spins = 100, .max_spins = 5000, .start_spins = 2000, .yield_every = 128,
                     .sleep_timeout_ns = 50000000, .turn_calls = 0, .turn_quantum_ns = 4000000};
}

static bool valid_wait(const dx_wait *w) {
    return w->min_spins <= w->max_spins && w->start_spins >= w->min_spins && w->start_spins <= w->max_spins &&
           w->sleep_timeout_ns >= 1000000 && w->sleep_timeout_ns <= 1000000000 && w->turn_quantum_ns >= 10000 &&
           w->turn_quantum_ns <= 1000000000;
}

// MARK: - Lanes

struct dx_lane {
    dx_region *region;
    char *base, *doorbell, *turnstile;
    dx_wait wait;
    uint64_t owner_word, sequence, timeout_ns;
    uint32_t budget, status;
    int failure;
    // Turns.
    bool holds_turn;
    uint64_t ticket, lease_start;
    uint32_t calls_until_check, calls_in_turn;
    bool avoiding;            // affinity narrowed to keep off the worker's CPU; `saved` is the old mask
    cpu_set_t saved;
};

static void bump(char *counter) {  // single writer: a relaxed load and store, no locked instruction
    store64(counter, load64(counter, RELAXED) + 1, RELAXED);
}

int dx_lane_claim(dx_region *r, const dx_wait *wait, dx_lane **out) {
    if (!r || !out) return DX_E_ARGUMENT;
    *out = NULL;
    dx_wait chosen = wait ? *wait : dx_wait_auto();
    if (!valid_wait(&chosen)) return DX_E_ARGUMENT;
    int problem = host_problem(r);
    if (problem != DX_OK) return problem;
    uint64_t pid = (uint32_t)r->own_pid;
    for (uint32_t index = 0; index < r->lane_count; index++) {
        char *lane = r->base + HEADER_SIZE + (size_t)index * r->stride;
        uint64_t word = load64(lane + L_OWNER, ACQUIRE);  // pairs with the last owner's release
        if (word >> 32 != 0) continue;
        uint64_t mine = pid << 32 | (uint32_t)(word + 1);
        if (!cas64(lane + L_OWNER, word, mine, memory_order_acq_rel)) continue;
        store64(lane + L_OWNER_START, r->own_start, RELAXED);
        uint64_t request = load64(lane + L_REQ_SEQ, ACQUIRE), response = load64(lane + L_RESP_SEQ, ACQUIRE);
        if (request != response) {  // an earlier owner died mid-call
            cas64(lane + L_OWNER, mine, mine & 0xffffffffu, memory_order_acq_rel);
            continue;
        }
        dx_lane *l = calloc(1, sizeof *l);
        if (!l) {
            cas64(lane + L_OWNER, mine, mine & 0xffffffffu, memory_order_acq_rel);
            return DX_E_SYSTEM;
        }
        uint32_t worker = index % r->workers;
        l->region = r;
        l->base = lane;
        l->doorbell = r->base + H_DOORBELLS + worker * BLOCK;
        l->turnstile = r->base + H_TURNSTILES + worker * TURNSTILE_STRIDE;
        l->wait = chosen;
        l->owner_word = mine;
        l->sequence = response;
        l->timeout_ns = 10000000000ull;
        l->budget = chosen.start_spins;
        *out = l;
        return DX_OK;
    }
    return DX_E_NO_LANE;
}

void *dx_lane_buffer(dx_lane *l) { return l->base + L_PAYLOAD; }
uint32_t dx_lane_status(const dx_lane *l) { return l->status; }
void dx_lane_set_timeout(dx_lane *l, uint64_t timeout_ns) { l->timeout_ns = timeout_ns; }

// MARK: - Turns ("Turns (guest-side scheduling)")

static char *wake_slot(dx_lane *l, uint64_t ticket) { return l->turnstile + TURN_WAKE + (ticket % TURN_WAKE_COUNT) * 4; }

static void wake(dx_lane *l, uint64_t ticket) {
    char *slot = wake_slot(l, ticket);
    atomic_fetch_add_explicit(AT32(slot), 1, SEQ_CST);  // first, so a waiter about to sleep does not
    futex_wake(slot);
}

static void renew_lease(dx_lane *l, uint64_t now) {
    l->lease_start = now;
    l->calls_in_turn = 0;
    store64(l->turnstile + TURN_LEASE, now, RELAXED);
}

static void pass_turn(dx_lane *l, uint64_t now) {
    store64(l->turnstile + TURN_LEASE, now, RELAXED);
    if (cas64(l->turnstile + TURN_SERVING, l->ticket, l->ticket + 1, SEQ_CST)) wake(l, l->ticket + 1);
}

static void acquire_turn(dx_lane *l) {
    char *serving = l->turnstile + TURN_SERVING;
    uint64_t stale_after = 2 * l->wait.turn_quantum_ns + 1000000;
    l->ticket = atomic_fetch_add_explicit(AT64(l->turnstile + TURN_NEXT), 1, SEQ_CST);
    char *slot = wake_slot(l, l->ticket);
    bool waited = false;
    for (;;) {
        uint32_t seen = load32(slot, SEQ_CST);  // before re-checking serving: a pass in between wakes us
        if (load64(serving, SEQ_CST) - l->ticket < (1ull << 62)) break;  // served, or already past us
        waited = true;
        futex_wait(slot, seen, stale_after);
        uint64_t holder = load64(serving, ACQUIRE);
        if (holder == l->ticket) break;
        uint64_t now = now_ns();
        if (l->ticket - holder < (1ull << 62) && now - load64(l->turnstile + TURN_LEASE, RELAXED) > stale_after) {
            // The holder neither renewed nor passed its turn: move the turn on by one ticket.
            store64(l->turnstile + TURN_LEASE, now, RELAXED);
            if (cas64(serving, holder, holder + 1, SEQ_CST)) {
                if (holder + 1 == l->ticket) break;
                wake(l, holder + 1);
            }
        }
        if (host_problem(l->region) != DX_OK) break;  // the call reports it
    }
    if (waited) bump(l->base + L_COUNTERS + C_TURN_WAITS);
    l->holds_turn = true;
    renew_lease(l, now_ns());
}

/// A hint: moves this thread off its worker's CPU (published by the worker) while it holds the turn.
static void keep_off_worker_cpu(dx_lane *l) {
    uint32_t worker = load32(l->doorbell + DOORBELL_WORKER_CPU, RELAXED);
    if (worker >= 1024 || sched_getcpu() != (int)worker) return;
    if (!l->avoiding && pthread_getaffinity_np(pthread_self(), sizeof l->saved, &l->saved) != 0) return;
    cpu_set_t set = l->saved;
    CPU_CLR((int)worker, &set);
    if (CPU_COUNT(&set) > 0 && pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0) l->avoiding = true;
}

static void restore_affinity(dx_lane *l) {
    if (!l->avoiding) return;
    pthread_setaffinity_np(pthread_self(), sizeof l->saved, &l->saved);
    l->avoiding = false;
}

static void take_turns(dx_lane *l) {
    l->calls_until_check = CALLS_BETWEEN_TURN_CHECKS - 1;
    if (l->wait.avoid_worker_cpu) keep_off_worker_cpu(l);
    uint64_t now = now_ns();
    if (l->holds_turn) {
        l->calls_in_turn += CALLS_BETWEEN_TURN_CHECKS;
        if (l->calls_in_turn < l->wait.turn_calls && now - l->lease_start < l->wait.turn_quantum_ns) return;
        if (load64(l->turnstile + TURN_SERVING, ACQUIRE) == l->ticket) {
            if (load64(l->turnstile + TURN_NEXT, ACQUIRE) == l->ticket + 1) {
                renew_lease(l, now);  // nobody waits: keep going
                return;
            }
            pass_turn(l, now);
        }
        l->holds_turn = false;
        restore_affinity(l);
    }
    acquire_turn(l);
}

void dx_lane_release(dx_lane *l) {
    if (!l) return;
    if (l->holds_turn) pass_turn(l, now_ns());
    restore_affinity(l);
    // Our last request and response happen before the next owner's claim.
    cas64(l->base + L_OWNER, l->owner_word, l->owner_word & 0xffffffffu, memory_order_acq_rel);
    free(l);
}

// MARK: - One call ("One call (guest)")

static int sleep_for_response(dx_lane *l, uint64_t seq) {
    char *response_seq = l->base + L_RESP_SEQ, *sleeping = l->base + L_SLEEPING;
    uint64_t deadline = now_ns() + l->timeout_ns;
    l->budget = l->budget / 2 > l->wait.min_spins ? l->budget / 2 : l->wait.min_spins;
    bump(l->base + L_COUNTERS + C_SLEEPS);
    for (;;) {
        // The flag before the re-check; the host stores the response seq-cst and then loads the flag.
        store32(sleeping, 1, SEQ_CST);
        if (load64(response_seq, SEQ_CST) == seq) break;
        int problem = host_problem(l->region);
        if (problem != DX_OK) {
            store32(sleeping, 0, RELAXED);
            return load64(response_seq, ACQUIRE) == seq ? DX_OK : problem;
        }
        if (now_ns() > deadline) {
            store32(sleeping, 0, RELAXED);
            return DX_E_TIMEOUT;
        }
        sem_wait_bounded((sem_t *)(void *)(l->base + L_SEM), l->wait.sleep_timeout_ns);
        store32(sleeping, 0, RELAXED);
        if (load64(response_seq, ACQUIRE) == seq) break;
    }
    store32(sleeping, 0, RELAXED);
    return DX_OK;
}

static int await_response(dx_lane *l, uint64_t seq) {
    char *response_seq = l->base + L_RESP_SEQ;
    uint32_t budget = l->budget, yield_every = l->wait.yield_every, until_yield = yield_every, spins = 0;
    for (;;) {
        if (load64(response_seq, ACQUIRE) == seq) {  // pairs with the host's seq-cst store
            uint32_t max = l->wait.max_spins;
            if (l->budget < max) l->budget += (max - l->budget) / 16 > 1 ? (max - l->budget) / 16 : 1;
            bump(l->base + L_COUNTERS + C_SPIN_WINS);
            return DX_OK;
        }
        if (++spins >= budget) return sleep_for_response(l, seq);
        cpu_relax();
        if (until_yield != 0 && --until_yield == 0) {
            until_yield = yield_every;
            sched_yield();
            bump(l->base + L_COUNTERS + C_YIELDS);
        }
        if ((spins & 0xfffff) == 0) {
            int problem = host_problem(l->region);
            if (problem != DX_OK) return problem;
        }
    }
}

int dx_lane_call(dx_lane *l, size_t request_length, size_t *response_length) {
    if (!l) return DX_E_ARGUMENT;
    if (l->failure != DX_OK) return DX_E_BROKEN;
    if (request_length > l->region->capacity) return DX_E_TOO_LARGE;
    if (l->wait.turn_calls != 0) {
        if (l->calls_until_check == 0) take_turns(l);
        else l->calls_until_check -= 1;
    }
    uint64_t seq = ++l->sequence;
    store32(l->base + L_REQ_LEN, (uint32_t)request_length, RELAXED);
    // Publishes the request and orders it before the load of the worker's sleeping flag.
    store64(l->base + L_REQ_SEQ, seq, SEQ_CST);
    char *flag = l->doorbell + DOORBELL_SLEEPING;
    if (load32(flag, SEQ_CST) != 0) {
        uint32_t one = 1;
        if (atomic_compare_exchange_strong_explicit(AT32(flag), &one, 0, memory_order_acq_rel, ACQUIRE)) {
            sem_post((sem_t *)(void *)(l->doorbell + DOORBELL_SEM));
            bump(l->base + L_COUNTERS + C_DOORBELLS);
        }
    }
    bump(l->base + L_COUNTERS + C_CALLS);
    int rc = await_response(l, seq);
    if (rc != DX_OK) {
        l->failure = rc;
        bump(l->base + L_COUNTERS + C_ERRORS);
        return rc;
    }
    l->status = load32(l->base + L_STATUS, RELAXED);  // ordered by the acquire that ended the wait
    uint32_t length = load32(l->base + L_RESP_LEN, RELAXED);
    if (l->status != 0 || length > l->region->capacity) {
        bump(l->base + L_COUNTERS + C_ERRORS);
        return l->status != 0 ? DX_E_REJECTED : DX_E_BAD_RESPONSE;
    }
    if (response_length) *response_length = length;
    return DX_OK;
}

int dx_call(dx_lane *l, const void *request, size_t request_length, void *response, size_t response_capacity,
            size_t *response_length) {
    if (!l || (request_length && !request) || (response_capacity && !response)) return DX_E_ARGUMENT;
    if (request_length > l->region->capacity) return DX_E_TOO_LARGE;
    if (request_length) memcpy(l->base + L_PAYLOAD, request, request_length);
    size_t length = 0;
    int rc = dx_lane_call(l, request_length, &length);
    if (rc != DX_OK) return rc;
    size_t count = length < response_capacity ? length : response_capacity;
    if (count) memcpy(response, l->base + L_PAYLOAD, count);
    if (response_length) *response_length = count;
    return DX_OK;
}

const char *dx_strerror(int error) {
    switch (error) {
    case DX_OK: return "ok";
    case DX_E_INVALID_NAME: return "invalid region name";
    case DX_E_NO_REGION: return "no such region (is the host running?)";
    case DX_E_PERMISSION: return "permission denied";
    case DX_E_NOT_READY: return "the region is not ready yet";
    case DX_E_NOT_DX: return "not a dx region";
    case DX_E_VERSION: return "layout version mismatch";
    case DX_E_SIZE: return "invalid sizes in the region header";
    case DX_E_SYSTEM: return "a system call failed";
    case DX_E_NO_LANE: return "no free lane";
    case DX_E_TOO_LARGE: return "request larger than the lane";
    case DX_E_REJECTED: return "the host rejected the request";
    case DX_E_BAD_RESPONSE: return "invalid response length";
    case DX_E_TIMEOUT: return "timed out waiting for the response";
    case DX_E_SHUTDOWN: return "the host is shutting down";
    case DX_E_HOST_GONE: return "the host is gone";
    case DX_E_BROKEN: return "an earlier call on this lane failed";
    case DX_E_ARGUMENT: return "invalid argument";
    default: return "unknown error";
    }
}
