// Exercises the C guest library against a running dx-host (scripts/test-c-guest runs it).
//
//   dxguest_test check   NAME THREADS CALLS    round trips of every size 0...capacity, each response checked
//   dxguest_test connect NAME THREADS CALLS    the same on a region of its own from the private host NAME
//                                              (dx-host --private; dx_connect, default socket path)
//   dxguest_test private NAME                  the private host NAME: dx_connect and dx_open with checked
//                                              echoes, the lanes asked for, claims, and the refusals (the
//                                              host's: too many lanes; ours: another uid, no host)
//   dxguest_test granted NAME PROCESSES THREADS SECONDS   PROCESSES processes, each with a region of its own
//                                              from the private host NAME, make checked round trips from
//                                              THREADS threads each for SECONDS: every call must succeed,
//                                              and every thread of every process must make calls (the
//                                              host grants its worker to one region at a time)
//   dxguest_test hostgone NAME shutdown|died   connects to the private host NAME, makes a call, prints
//                                              "ready", then calls until the host is gone (the script stops
//                                              it with SIGTERM, or kills it): the calls must then fail with
//                                              DX_E_SHUTDOWN (or DX_E_HOST_GONE) within a few seconds
//   dxguest_test bench   NAME THREADS SECONDS  64-byte round trips, each checked and timed (two clock
//                                              reads per call, as dx-guest bench does); one JSON line
//   dxguest_test bench-untimed NAME THREADS SECONDS   the same without the per-call clock reads
//   dxguest_test version NAME                  a region of another layout version (and other bad headers,
//                                              a missing host lock, an unsafe mode, another owner) made
//                                              under NAME is refused; then, on a region forged under NAME
//                                              whose host lock the test holds, the claim rules and the
//                                              turn timeout; NAME must not be in use
//
// Exit status 0 when every check passed, 1 otherwise.
#define _GNU_SOURCE
#include "dxguest.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *region_name;
static int thread_count;
static long calls_per_thread;
static double seconds;
static bool timed;
static bool private_host;  // connect: a region of our own from a private host, not the named one
static atomic_long failures;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *what, long detail, int rc) {
    fprintf(stderr, "FAIL: %s (%ld): %s\n", what, detail, dx_strerror(rc));
    atomic_fetch_add(&failures, 1);
}

static uint64_t fnv1a64(const unsigned char *bytes, size_t count) {
    uint64_t hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < count; i++) hash = (hash ^ bytes[i]) * 0x00000100000001b3ull;
    return hash;
}

/// Checks one response against the request for the region's handler.
static bool response_ok(uint32_t handler, const unsigned char *request, size_t length, const unsigned char *response,
                        size_t response_length) {
    if (handler == 1) return response_length == length && memcmp(request, response, length) == 0;
    if (handler == 2) {
        uint64_t sum = fnv1a64(request, length), got = 0;
        if (response_length != 8) return false;
        for (int i = 7; i >= 0; i--) got = got << 8 | response[i];  // little-endian
        return got == sum;
    }
    return false;
}

static _Atomic uint64_t *word64(unsigned char *p) { return (_Atomic uint64_t *)(void *)p; }
static _Atomic uint32_t *word32(unsigned char *p) { return (_Atomic uint32_t *)(void *)p; }

typedef struct {
    dx_region *region;
    int index;
    long round_trips;
    uint64_t turn_waits;           // the lane's guest counter, read before the release
    uint64_t latency_buckets[64];  // call latency, log2 buckets of nanoseconds (timed benches)
} worker;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/// The thread's lane (the default wait), or NULL after reporting why not.
static dx_lane *claim(worker *w) {
    dx_lane *lane;
    int rc = dx_lane_claim(w->region, NULL, &lane);
    if (rc == DX_OK) return lane;
    fail("claim", w->index, rc);
    return NULL;
}

static void *check_thread(void *argument) {
    worker *w = argument;
    dx_lane *lane = claim(w);
    if (!lane) return NULL;
    int rc;
    size_t capacity = dx_region_capacity(w->region);
    uint32_t handler = dx_region_handler(w->region);
    unsigned char *request = malloc(capacity + 1), *response = malloc(capacity);
    for (long i = 0; i < calls_per_thread; i++) {
        size_t length = (size_t)((i * 7919 + w->index * 104729) % (long)(capacity + 1));
        if (i < 3) length = (size_t[]){0, 1, capacity}[i];  // the edges first
        for (size_t b = 0; b < length; b++) request[b] = (unsigned char)(b * 31 + i + w->index);
        size_t got = 0;
        rc = dx_call(lane, request, length, response, capacity, &got);
        if (rc != DX_OK) {
            fail("call", i, rc);
            break;
        }
        if (!response_ok(handler, request, length, response, got)) {
            fail("response differs from the request", i, DX_OK);
            break;
        }
        w->round_trips++;
    }
    // One byte more than the lane holds is refused before anything is sent; the lane stays usable.
    rc = dx_call(lane, request, capacity + 1, response, capacity, NULL);
    if (rc != DX_E_TOO_LARGE) fail("oversize request not refused", (long)capacity + 1, rc);
    size_t got = 0;
    request[0] = 42;
    rc = dx_call(lane, request, 1, response, capacity, &got);
    if (rc != DX_OK || !response_ok(handler, request, 1, response, got)) fail("call after oversize", 0, rc);
    dx_lane_release(lane);
    free(request);
    free(response);
    return NULL;
}

static void *bench_thread(void *argument) {
    worker *w = argument;
    dx_lane *lane = claim(w);
    if (!lane) return NULL;
    int rc;
    uint32_t handler = dx_region_handler(w->region);
    unsigned char request[64], response[64];
    unsigned char *buffer = dx_lane_buffer(lane);
    double end = now_s() + seconds;
    for (long i = 0;; i++) {
        if ((i & 1023) == 0 && now_s() >= end) break;
        for (int b = 0; b < 64; b += 8) request[b] = (unsigned char)(i + b);
        memcpy(buffer, request, sizeof request);
        size_t got = 0;
        uint64_t start = timed ? now_ns() : 0;
        rc = dx_lane_call(lane, sizeof request, &got);
        if (timed) {
            uint64_t took = now_ns() - start;
            w->latency_buckets[took ? 63 - __builtin_clzll(took) : 0]++;
        }
        if (rc != DX_OK) {
            fail("call", i, rc);
            break;
        }
        memcpy(response, buffer, got < sizeof response ? got : sizeof response);
        if (!response_ok(handler, request, sizeof request, response, got)) {
            fail("response differs from the request", i, DX_OK);
            break;
        }
        w->round_trips++;
    }
    // The lane's guest counters, through the buffer: the payload is at DX_LANE_PAYLOAD of the lane.
    unsigned char *counters = buffer - DX_LANE_PAYLOAD + DX_LANE_GUEST_COUNTERS;
    w->turn_waits = atomic_load_explicit(word64(counters + DX_COUNTER_TURN_WAITS), memory_order_relaxed);
    dx_lane_release(lane);
    return NULL;
}

static int run_threads(void *(*body)(void *), const char *mode) {
    dx_region *region;
    int rc = private_host ? dx_connect(region_name, 0, NULL, (uid_t)-1, &region) : dx_attach(region_name, &region);
    if (rc != DX_OK) {
        fprintf(stderr, "FAIL: %s '%s': %s\n", private_host ? "connect" : "attach", region_name, dx_strerror(rc));
        return 1;
    }
    worker workers[64] = {0};
    pthread_t threads[64];
    double start = now_s();
    for (int t = 0; t < thread_count; t++) {
        workers[t] = (worker){.region = region, .index = t};
        pthread_create(&threads[t], NULL, body, &workers[t]);
    }
    long total = 0, slowest = -1, fastest = 0;
    for (int t = 0; t < thread_count; t++) {
        pthread_join(threads[t], NULL);
        total += workers[t].round_trips;
        if (slowest < 0 || workers[t].round_trips < slowest) slowest = workers[t].round_trips;
        if (workers[t].round_trips > fastest) fastest = workers[t].round_trips;
    }
    double elapsed = now_s() - start;
    dx_detach(region);
    long failed = atomic_load(&failures);
    if (strcmp(mode, "bench") == 0) {
        // p99.9 as the upper edge of its log2 bucket (timed benches only).
        uint64_t buckets[64] = {0}, counted = 0, p999 = 0;
        for (int t = 0; t < thread_count; t++)
            for (int b = 0; b < 64; b++) buckets[b] += workers[t].latency_buckets[b], counted += workers[t].latency_buckets[b];
        for (uint64_t b = 0, seen = 0; b < 64 && counted; b++) {
            seen += buckets[b];
            if (seen * 1000 >= counted * 999) {
                p999 = 2ull << b;
                break;
            }
        }
        printf("{\"guest\":\"c\",\"timed\":%s,\"threads\":%d,\"round_trips\":%ld,\"seconds\":%.3f,"
               "\"round_trips_per_s\":%.0f,\"slowest_over_fastest\":%.3f,\"p999_ns_at_most\":%llu,\"errors\":%ld}\n",
               timed ? "true" : "false", thread_count, total, elapsed, (double)total / elapsed,
               fastest ? (double)slowest / fastest : 0.0, (unsigned long long)p999, failed);
    } else {
        printf("c guest check: %d threads, %ld round trips checked, %ld failures\n", thread_count, total, failed);
        if (total != (long)thread_count * calls_per_thread) return 1;
    }
    return failed == 0 ? 0 : 1;
}

// MARK: - Forged regions

// Offsets, sizes and the magic are dxlayout.h's (which CGuestTests compares with Layout.swift).
enum {
    FORGED_LANES = 8,
    FORGED_CAPACITY = 64,
    FORGED_STRIDE = (DX_LANE_PAYLOAD + FORGED_CAPACITY + DX_BLOCK - 1) / DX_BLOCK * DX_BLOCK,  // dx_lane_stride
};

/// A region object the test makes as a host would, with header words of its choosing.
typedef struct {
    const char *what;
    uint64_t magic;
    uint32_t version, lanes, state;
    bool sized;        // every size field a valid region's (else only the header size and lane count)
    bool empty;        // a 0-byte object: the host is between shm_open and ftruncate
    bool host_lock;    // the test holds the host's lock on [0, 8) while the guest attaches
    bool other_owner;  // the guest is told that the host runs as another uid
    mode_t mode;       // fchmod'ed after creation (0: stays 0600)
    int expected;
} forgery;

typedef struct {
    char object[96];
    int fd;  // the test's own open file description: the host's lock, when taken, is held through it
    unsigned char *base;
    size_t size;
} forged_region;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void put32(unsigned char *base, size_t offset, uint32_t value) { memcpy(base + offset, &value, 4); }
static void put64(unsigned char *base, size_t offset, uint64_t value) { memcpy(base + offset, &value, 8); }


/// Creates `/dx.<name>` with mode 0600 (then `f->mode`), writes the header with magic last, and takes
/// the host's lock when asked.
static forged_region forge(const char *name, const forgery *f) {
    forged_region r = {.fd = -1};
    snprintf(r.object, sizeof r.object, "/dx.%s", name);
    r.fd = shm_open(r.object, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (r.fd < 0) die("shm_open");
    if (f->mode && fchmod(r.fd, f->mode) != 0) die("fchmod");
    if (f->empty) return r;
    size_t region_size = DX_HEADER_SIZE + (size_t)f->lanes * FORGED_STRIDE;
    r.size = f->sized ? region_size : DX_HEADER_SIZE;
    if (ftruncate(r.fd, (off_t)r.size) != 0) die("ftruncate");
    r.base = mmap(NULL, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
    if (r.base == MAP_FAILED) die("mmap");
    put32(r.base, DX_HEADER_VERSION, f->version);
    put32(r.base, DX_HEADER_HEADER_SIZE, DX_HEADER_SIZE);
    put32(r.base, DX_HEADER_LANE_COUNT, f->lanes);
    if (f->sized) {
        put32(r.base, DX_HEADER_LANE_STRIDE, FORGED_STRIDE);
        put32(r.base, DX_HEADER_SLOT_CAPACITY, FORGED_CAPACITY);
        put32(r.base, DX_HEADER_WORKER_COUNT, 1);
        put64(r.base, DX_HEADER_REGION_SIZE, region_size);
        put32(r.base, DX_HEADER_HANDLER, 1);  // echo
        put32(r.base, DX_HEADER_STATE, f->state);
        put64(r.base, DX_HEADER_LANES_OFFSET, DX_HEADER_SIZE);
        put64(r.base, DX_HEADER_RAW_OFFSET, region_size);  // raw count 0
        put32(r.base, DX_HEADER_DOORBELLS + DX_DOORBELL_WORKER_CPU, 0xFFFFFFFFu);  // worker 0's CPU: not known
    }
    if (f->host_lock) {
        struct flock lock = {
            .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = DX_LOCK_HOST_START, .l_len = DX_LOCK_HOST_LENGTH};
        if (fcntl(r.fd, F_OFD_SETLK, &lock) != 0) die("F_OFD_SETLK");
    }
    // Last, as a host publishes.
    atomic_store_explicit(word64(r.base + DX_HEADER_MAGIC), f->magic, memory_order_release);
    return r;
}

/// Removes the name, unmaps, and closes the descriptor (which drops the host's lock).
static void unforge(forged_region *r) {
    shm_unlink(r->object);
    if (r->base) munmap(r->base, r->size);
    close(r->fd);
}

static int attach_forged(const char *name, const forgery *f) {
    forged_region forged = forge(name, f);
    dx_region *region = NULL;
    int rc = f->other_owner ? dx_attach_as(name, getuid() + 1, &region) : dx_attach(name, &region);
    unforge(&forged);
    if (region) dx_detach(region);
    return rc;
}

static int bad;

static void expect(bool ok, const char *what, int rc) {
    printf("%s: %s -> %s\n", ok ? "ok" : "FAIL", what, dx_strerror(rc));
    bad += !ok;
}

static void refuse_forgeries(const char *name) {
    const forgery cases[] = {
        {.what = "layout version 0", .magic = DX_MAGIC, .version = 0, .lanes = 8, .sized = true, .expected = DX_E_VERSION},
        {.what = "layout version 1", .magic = DX_MAGIC, .version = 1, .lanes = 8, .sized = true, .expected = DX_E_VERSION},
        {.what = "layout version 3", .magic = DX_MAGIC, .version = 3, .lanes = 8, .sized = true, .expected = DX_E_VERSION},
        {.what = "layout version 0xFFFFFFFF", .magic = DX_MAGIC, .version = 0xFFFFFFFFu, .lanes = 8, .sized = true,
         .expected = DX_E_VERSION},
        {.what = "an object of 0 bytes", .empty = true, .expected = DX_E_NOT_READY},
        {.what = "magic not yet stored", .magic = 0, .version = 2, .lanes = 8, .sized = true, .host_lock = true,
         .expected = DX_E_NOT_READY},
        {.what = "another magic", .magic = 0x1122334455667788ull, .version = 2, .lanes = 8, .sized = true,
         .host_lock = true, .expected = DX_E_NOT_DX},
        {.what = "version 2 with sizes that do not fit", .magic = DX_MAGIC, .version = 2, .lanes = 8, .host_lock = true,
         .expected = DX_E_SIZE},
        {.what = "version 2 with 0 lanes", .magic = DX_MAGIC, .version = 2, .lanes = 0, .sized = true, .host_lock = true,
         .expected = DX_E_SIZE},
        {.what = "valid sizes, no host lock", .magic = DX_MAGIC, .version = 2, .lanes = 8, .sized = true, .state = 1,
         .expected = DX_E_HOST_GONE},
        {.what = "valid sizes, no host lock, state stopping", .magic = DX_MAGIC, .version = 2, .lanes = 8, .sized = true,
         .state = 2, .expected = DX_E_SHUTDOWN},
        {.what = "valid sizes, host lock held", .magic = DX_MAGIC, .version = 2, .lanes = 8, .sized = true, .state = 1,
         .host_lock = true, .expected = DX_OK},
        {.what = "host lock held, state stopping (the lock wins)", .magic = DX_MAGIC, .version = 2, .lanes = 8,
         .sized = true, .state = 2, .host_lock = true, .expected = DX_OK},
        {.what = "mode 0666", .magic = DX_MAGIC, .version = 2, .lanes = 8, .sized = true, .state = 1, .host_lock = true,
         .mode = 0666, .expected = DX_E_UNSAFE_MODE},
        {.what = "mode 0620", .magic = DX_MAGIC, .version = 2, .lanes = 8, .sized = true, .state = 1, .host_lock = true,
         .mode = 0620, .expected = DX_E_UNSAFE_MODE},
        {.what = "another owner than the host's uid", .magic = DX_MAGIC, .version = 2, .lanes = 8, .sized = true,
         .state = 1, .host_lock = true, .other_owner = true, .expected = DX_E_WRONG_OWNER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = attach_forged(name, &cases[i]);
        bool ok = rc == cases[i].expected;
        if (ok && rc == DX_E_VERSION && dx_last_found_version() != cases[i].version) ok = false;
        expect(ok, cases[i].what, rc);
    }
}

// MARK: - Claims and turns on a forged live region

static unsigned char *lane_at(forged_region *r, int index) {
    return r->base + DX_HEADER_SIZE + (size_t)index * FORGED_STRIDE;
}
static uint64_t owner_of(forged_region *r, int index) {
    return atomic_load_explicit(word64(lane_at(r, index) + DX_LANE_OWNER), memory_order_acquire);
}

/// Which lane of the forged region `lane` is: the guest maps the region elsewhere, so a marker written
/// through its buffer is looked for in the test's mapping.
static int index_of(forged_region *r, dx_lane *lane) {
    static uint64_t marker = 0x5A5A000000000000ull;
    marker++;
    memcpy(dx_lane_buffer(lane), &marker, 8);
    for (int i = 0; i < FORGED_LANES; i++)
        if (memcmp(lane_at(r, i) + DX_LANE_PAYLOAD, &marker, 8) == 0) return i;
    return -1;
}

/// Plays the host's worker on every lane of a forged region: echo, the response in place.
typedef struct {
    forged_region *region;
    atomic_bool stop;
} responder;

static void *respond(void *argument) {
    responder *r = argument;
    while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
        for (int i = 0; i < FORGED_LANES; i++) {
            unsigned char *lane = lane_at(r->region, i);
            uint64_t request = atomic_load_explicit(word64(lane + DX_LANE_REQUEST_SEQ), memory_order_acquire);
            if (request == atomic_load_explicit(word64(lane + DX_LANE_RESPONSE_SEQ), memory_order_relaxed)) continue;
            uint32_t length = atomic_load_explicit(word32(lane + DX_LANE_REQUEST_LENGTH), memory_order_relaxed);
            atomic_store_explicit(word32(lane + DX_LANE_RESPONSE_LENGTH), length, memory_order_relaxed);
            atomic_store_explicit(word32(lane + DX_LANE_STATUS), DX_STATUS_OK, memory_order_relaxed);
            atomic_store_explicit(word64(lane + DX_LANE_RESPONSE_SEQ), request, memory_order_seq_cst);
            // Publishes to the guest's parker, as the host does.
            uint32_t one = 1;
            unsigned char *sleeping = lane + DX_LANE_GUEST_SLEEPING, *word = lane + DX_LANE_GUEST_WORD;
            if (atomic_load_explicit(word32(sleeping), memory_order_seq_cst) == 1 &&
                atomic_compare_exchange_strong_explicit(word32(sleeping), &one, 0, memory_order_acq_rel,
                                                        memory_order_acquire)) {
                atomic_store_explicit(word32(word), 1, memory_order_release);
                syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
            }
        }
        usleep(100);
    }
    return NULL;
}

/// The claim rules ("Claim and release"): the lock decides, not the owner word.
static void check_claims(dx_region *region, forged_region *forged) {
    dx_lane *lanes[FORGED_LANES + 1] = {0};
    int claimed = 0, rc = DX_OK;
    while (claimed <= FORGED_LANES && (rc = dx_lane_claim(region, NULL, &lanes[claimed])) == DX_OK) claimed++;
    expect(claimed == FORGED_LANES && rc == DX_E_NO_LANE, "every lane claimed, then no lane", rc);
    uint64_t mine = (uint64_t)(uint32_t)getpid() << 32 | 1;
    expect(owner_of(forged, 0) == mine, "owner word is pid << 32 | generation + 1", DX_OK);

    // A vandal frees lane 2's word: its owner's lock still keeps it.
    atomic_store_explicit(word64(lane_at(forged, 2) + DX_LANE_OWNER), 0, memory_order_relaxed);
    dx_lane *extra = NULL;
    rc = dx_lane_claim(region, NULL, &extra);
    expect(rc == DX_E_NO_LANE, "a lane whose word was freed under its live owner is not taken", rc);
    if (extra) dx_lane_release(extra);
    dx_lane_release(lanes[2]);  // its CAS fails harmlessly; the lock goes
    rc = dx_lane_claim(region, NULL, &lanes[2]);
    expect(rc == DX_OK && index_of(forged, lanes[2]) == 2, "released after the vandal, claimed again", rc);
    for (int i = 0; i < claimed; i++) dx_lane_release(lanes[i]);
    expect(owner_of(forged, 0) >> 32 == 0 && (uint32_t)owner_of(forged, 0) == 1, "release keeps the generation",
           DX_OK);

    // Lane 0: a dead owner's word (nobody holds its lock); lane 1: a call its dead owner left unanswered.
    uint64_t dead_owner = (uint64_t)12345 << 32 | 7;
    atomic_store_explicit(word64(lane_at(forged, 0) + DX_LANE_OWNER), dead_owner, memory_order_relaxed);
    atomic_store_explicit(word64(lane_at(forged, 1) + DX_LANE_REQUEST_SEQ), 5, memory_order_relaxed);
    atomic_store_explicit(word64(lane_at(forged, 1) + DX_LANE_RESPONSE_SEQ), 4, memory_order_relaxed);
    for (claimed = 0; claimed < FORGED_LANES && dx_lane_claim(region, NULL, &lanes[claimed]) == DX_OK;) claimed++;
    bool last_is_0 = claimed > 0 && index_of(forged, lanes[claimed - 1]) == 0;
    expect(claimed == FORGED_LANES - 1 && last_is_0, "free lanes first, then a dead owner's; not an unanswered one",
           DX_OK);
    expect(owner_of(forged, 0) == (mine & ~0xffffffffull) + 8, "a dead owner's word is taken over", DX_OK);
    expect(owner_of(forged, 1) >> 32 == 0, "the unanswered lane was given back", DX_OK);
    for (int i = 0; i < claimed; i++) dx_lane_release(lanes[i]);
    atomic_store_explicit(word64(lane_at(forged, 1) + DX_LANE_RESPONSE_SEQ), 5, memory_order_relaxed);  // "answered"
}

/// A turn that never comes fails the call with DX_E_TIMEOUT before anything is published, and the
/// lane stays usable; a response that never comes breaks the lane.
static void check_turn_timeout(dx_region *region, forged_region *forged) {
    dx_wait wait = dx_wait_fair();
    wait.turn_quantum_ns = 1000000000;  // a fresh lease is stale only after 2 s: longer than the timeout
    dx_lane *lane = NULL;
    int rc = dx_lane_claim(region, &wait, &lane);
    expect(rc == DX_OK && index_of(forged, lane) == 0, "claim lane 0 with turns", rc);
    if (rc != DX_OK) return;
    unsigned char *turnstile = forged->base + DX_HEADER_TURNSTILES;
    atomic_store_explicit(word64(turnstile + DX_TURN_SERVING), 0, memory_order_seq_cst);
    atomic_store_explicit(word64(turnstile + DX_TURN_NEXT), 1000, memory_order_seq_cst);  // our ticket is 1000
    atomic_store_explicit(word64(turnstile + DX_TURN_LEASE), now_ns(), memory_order_relaxed);  // a live holder's
    dx_lane_set_timeout(lane, 100000000);
    double start = now_s();
    rc = dx_call(lane, "turn", 4, NULL, 0, NULL);
    double took = now_s() - start;
    uint64_t published = atomic_load_explicit(word64(lane_at(forged, 0) + DX_LANE_REQUEST_SEQ), memory_order_acquire);
    expect(rc == DX_E_TIMEOUT && took >= 0.09 && took < 1.5 && published == 0,
           "a turn that never comes times out before publishing", rc);

    responder host = {.region = forged};
    pthread_t thread;
    pthread_create(&thread, NULL, respond, &host);
    char answer[8] = {0};
    size_t got = 0;
    rc = dx_call(lane, "again", 5, answer, sizeof answer, &got);
    expect(rc == DX_OK && got == 5 && memcmp(answer, "again", 5) == 0, "the lane is usable after it", rc);
    atomic_store(&host.stop, true);
    pthread_join(thread, NULL);

    rc = dx_call(lane, "nobody", 6, answer, sizeof answer, &got);
    expect(rc == DX_E_TIMEOUT, "a response that never comes times out", rc);
    rc = dx_call(lane, "after", 5, answer, sizeof answer, &got);
    expect(rc == DX_E_BROKEN, "and breaks the lane", rc);
    dx_lane_release(lane);
}

static void check_live_forgery(const char *name) {
    forgery live = {
        .magic = DX_MAGIC, .version = 2, .lanes = FORGED_LANES, .sized = true, .state = 1, .host_lock = true};
    forged_region forged = forge(name, &live);
    dx_region *region = NULL;
    int rc = dx_attach(name, &region);
    expect(rc == DX_OK, "attach to a forged region whose host lock is held", rc);
    if (rc == DX_OK) {
        check_claims(region, &forged);
        check_turn_timeout(region, &forged);
        dx_detach(region);
    }
    unforge(&forged);
}

static int refusals(const char *name) {
    refuse_forgeries(name);
    int rc = dx_attach("no.such.region.here", &(dx_region *){NULL});
    expect(rc == DX_E_NO_REGION, "missing region", rc);
    rc = dx_attach("../etc", &(dx_region *){NULL});
    expect(rc == DX_E_INVALID_NAME, "invalid name", rc);
    char longest[66];
    memset(longest, 'x', 65);
    longest[65] = 0;
    rc = dx_attach(longest, &(dx_region *){NULL});
    expect(rc == DX_E_INVALID_NAME, "a name of 65 characters", rc);
    longest[64] = 0;
    rc = dx_attach(longest, &(dx_region *){NULL});
    expect(rc == DX_E_NO_REGION, "a name of 64 characters is valid", rc);
    check_live_forgery(name);
    return bad == 0 ? 0 : 1;
}

// MARK: - A private host (dx-host --private)

/// One echo round trip of `message` on a lane of `region`, checked.
static bool echo_ok(dx_region *region, const char *message) {
    dx_lane *lane = NULL;
    if (dx_lane_claim(region, NULL, &lane) != DX_OK) return false;
    char answer[64] = {0};
    size_t got = 0, length = strlen(message);
    int rc = dx_call(lane, message, length, answer, sizeof answer, &got);
    dx_lane_release(lane);
    return rc == DX_OK && got == length && memcmp(answer, message, length) == 0;
}

static int private_checks(const char *name) {
    dx_region *region = NULL;
    int rc = dx_attach(name, &region);
    expect(rc == DX_E_NO_REGION, "a private host publishes no name", rc);

    rc = dx_connect(name, 2, NULL, (uid_t)-1, &region);
    expect(rc == DX_OK && dx_region_lane_count(region) == 2, "connect for 2 lanes: a region of 2 lanes", rc);
    if (rc == DX_OK) {
        expect(dx_region_handler(region) == 1 && echo_ok(region, "hello, private host"), "an echo, checked", DX_OK);
        dx_lane *lanes[3] = {0};
        int claimed = 0;
        while (claimed < 3 && (rc = dx_lane_claim(region, NULL, &lanes[claimed])) == DX_OK) claimed++;
        expect(claimed == 2 && rc == DX_E_NO_LANE, "both lanes claimed (without locks), then no lane", rc);
        if (claimed > 0) {
            dx_lane_release(lanes[0]);
            rc = dx_lane_claim(region, NULL, &lanes[0]);
            expect(rc == DX_OK, "a released lane is claimed again", rc);
        }
        size_t got = 0;
        char answer[8];
        rc = claimed == 2 ? dx_call(lanes[1], "second", 6, answer, sizeof answer, &got) : DX_E_NO_LANE;
        expect(rc == DX_OK && got == 6 && memcmp(answer, "second", 6) == 0, "a call on the second lane", rc);
        for (int i = 0; i < claimed; i++) dx_lane_release(lanes[i]);
        dx_detach(region);
    }

    // The default socket path, given explicitly (name NULL), and dx_open's fallback to it.
    char path[108];
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (runtime && runtime[0]) snprintf(path, sizeof path, "%s/dx/%s.sock", runtime, name);
    else snprintf(path, sizeof path, "/tmp/dx-%u/%s.sock", (unsigned)getuid(), name);
    rc = dx_connect(NULL, 0, path, (uid_t)-1, &region);
    expect(rc == DX_OK && echo_ok(region, "by path"), "connect by socket path, the host's default lanes", rc);
    if (rc == DX_OK) dx_detach(region);
    rc = dx_open(name, 1, NULL, (uid_t)-1, &region);
    expect(rc == DX_OK && dx_region_lane_count(region) == 1 && echo_ok(region, "opened"),
           "dx_open finds no name and connects", rc);
    if (rc == DX_OK) dx_detach(region);

    rc = dx_connect(name, 100000, NULL, (uid_t)-1, &region);
    expect(rc == DX_E_REFUSED && region == NULL && dx_last_refusal()[0] != 0, "100000 lanes are refused by the host",
           rc);
    printf("    the host's sentence: %s\n", dx_last_refusal());
    rc = dx_connect(name, 0, NULL, getuid() + 1, &region);
    expect(rc == DX_E_WRONG_OWNER && dx_last_refusal()[0] == 0, "a host of another uid than the one we were told", rc);
    rc = dx_connect("no.such.host.here", 0, NULL, (uid_t)-1, &region);
    expect(rc == DX_E_NO_REGION, "no host on the socket", rc);
    rc = dx_connect("../etc", 0, NULL, (uid_t)-1, &region);
    expect(rc == DX_E_INVALID_NAME, "invalid name", rc);
    rc = dx_connect(name, -1, NULL, (uid_t)-1, &region);
    expect(rc == DX_E_ARGUMENT, "negative lanes", rc);

    rc = dx_connect(name, 0, NULL, (uid_t)-1, &region);  // still served after all that
    expect(rc == DX_OK && echo_ok(region, "still here"), "connect again after the refusals", rc);
    if (rc == DX_OK) dx_detach(region);
    return bad == 0 ? 0 : 1;
}

/// One process of `granted`: a region of its own from the private host, THREADS threads of checked
/// round trips (the default wait: turns) for SECONDS. Exit status 0 when no call failed and every
/// thread made calls.
static int granted_process(int process) {
    dx_region *region;
    int rc = dx_connect(region_name, thread_count, NULL, (uid_t)-1, &region);
    if (rc != DX_OK) {
        fprintf(stderr, "FAIL: process %d: connect '%s': %s\n", process, region_name, dx_strerror(rc));
        return 1;
    }
    worker workers[64] = {0};
    pthread_t threads[64];
    for (int t = 0; t < thread_count; t++) {
        workers[t] = (worker){.region = region, .index = t};
        pthread_create(&threads[t], NULL, bench_thread, &workers[t]);
    }
    long total = 0, idle = 0;
    uint64_t turn_waits = 0;
    for (int t = 0; t < thread_count; t++) {
        pthread_join(threads[t], NULL);
        total += workers[t].round_trips;
        turn_waits += workers[t].turn_waits;
        if (workers[t].round_trips == 0) idle++;
    }
    dx_detach(region);
    long failed = atomic_load(&failures);
    printf("    process %d: %d threads, %ld round trips checked, %llu turn waits, %ld failures\n", process,
           thread_count, total, (unsigned long long)turn_waits, failed);
    if (idle > 0) fprintf(stderr, "FAIL: process %d: %ld threads made no call\n", process, idle);
    return failed == 0 && idle == 0 ? 0 : 1;
}

/// `granted`: PROCESSES processes of granted_process at once against one private host.
static int granted_processes(int processes) {
    pid_t children[64];
    for (int p = 0; p < processes; p++) {
        fflush(stdout);
        children[p] = fork();
        if (children[p] < 0) die("fork");
        if (children[p] == 0) {
            int status = granted_process(p);
            fflush(stdout);
            _exit(status);
        }
    }
    int failed = 0;
    for (int p = 0; p < processes; p++) {
        int status = 0;
        if (waitpid(children[p], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    }
    printf("c guest granted: %d processes x %d threads, %d failed\n", processes, thread_count, failed);
    return failed == 0 ? 0 : 1;
}

/// Calls until the private host is gone, which must end a call within a few seconds with
/// DX_E_SHUTDOWN (`shutdown`: the host was stopped) or DX_E_HOST_GONE (`died`: it was killed).
static int host_gone(const char *name, const char *how) {
    dx_region *region = NULL;
    dx_lane *lane = NULL;
    int rc = dx_connect(name, 1, NULL, (uid_t)-1, &region);
    if (rc == DX_OK) rc = dx_lane_claim(region, NULL, &lane);
    if (rc == DX_OK) rc = dx_call(lane, "ready", 5, NULL, 0, NULL);
    expect(rc == DX_OK, "connect, claim and call", rc);
    if (rc != DX_OK) return 1;
    printf("ready\n");
    fflush(stdout);
    double start = now_s(), gone = 0;
    while (now_s() - start < 30) {
        rc = dx_call(lane, "are you there", 13, NULL, 0, NULL);
        if (rc != DX_OK) {
            gone = now_s();
            break;
        }
        usleep(1000);
    }
    int expected = strcmp(how, "died") == 0 ? DX_E_HOST_GONE : DX_E_SHUTDOWN;
    expect(rc == expected, strcmp(how, "died") == 0 ? "a killed host: host gone" : "a stopped host: shut down", rc);
    dx_lane *another = NULL;
    int claim = dx_lane_claim(region, NULL, &another);
    expect(claim == expected, "and a claim after it", claim);
    if (another) dx_lane_release(another);
    printf("    the first failed call ended %.0f ms after \"ready\"\n", gone ? (gone - start) * 1000 : -1);
    dx_lane_release(lane);
    dx_detach(region);
    return bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "version") == 0) return refusals(argv[2]);
    if (argc == 3 && strcmp(argv[1], "private") == 0) return private_checks(argv[2]);
    if (argc == 4 && strcmp(argv[1], "hostgone") == 0) return host_gone(argv[2], argv[3]);
    if (argc == 6 && strcmp(argv[1], "granted") == 0) {
        region_name = argv[2];
        int processes = atoi(argv[3]);
        thread_count = atoi(argv[4]);
        seconds = atof(argv[5]);
        if (processes < 1 || processes > 64 || thread_count < 1 || thread_count > 64 || seconds <= 0) {
            fprintf(stderr, "processes and threads must be 1...64, seconds above 0\n");
            return 2;
        }
        return granted_processes(processes);
    }
    bool untimed = argc == 5 && strcmp(argv[1], "bench-untimed") == 0;
    private_host = argc == 5 && strcmp(argv[1], "connect") == 0;
    if (argc == 5 && (strcmp(argv[1], "check") == 0 || strcmp(argv[1], "bench") == 0 || untimed || private_host)) {
        region_name = argv[2];
        thread_count = atoi(argv[3]);
        if (thread_count < 1 || thread_count > 64) {
            fprintf(stderr, "threads must be 1...64\n");
            return 2;
        }
        if (strcmp(argv[1], "check") == 0 || private_host) {
            calls_per_thread = atol(argv[4]);
            return run_threads(check_thread, "check");
        }
        seconds = atof(argv[4]);
        timed = !untimed;
        return run_threads(bench_thread, "bench");
    }
    fprintf(stderr, "usage: dxguest_test check|connect|bench|bench-untimed NAME THREADS CALLS|SECONDS, "
                    "dxguest_test version|private NAME, dxguest_test granted NAME PROCESSES THREADS SECONDS, "
                    "or dxguest_test hostgone NAME shutdown|died\n");
    return 2;
}
