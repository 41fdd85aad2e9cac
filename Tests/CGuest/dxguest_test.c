// Exercises the C guest library against a running dx-host (scripts/test-c-guest runs it).
//
//   dxguest_test check   NAME THREADS CALLS    round trips of every size 0...capacity, each response checked
//   dxguest_test bench   NAME THREADS SECONDS  64-byte round trips, each checked and timed (two clock
//                                              reads per call, as dx-guest bench does); one JSON line
//   dxguest_test bench-untimed NAME THREADS SECONDS   the same without the per-call clock reads
//   dxguest_test version NAME                  a region of another layout version (and other bad headers)
//                                              made under NAME is refused; NAME must not be in use
//
// Exit status 0 when every check passed, 1 otherwise.
#define _GNU_SOURCE
#include "dxguest.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static const char *region_name;
static int thread_count;
static long calls_per_thread;
static double seconds;
static bool timed;
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

typedef struct {
    dx_region *region;
    int index;
    long round_trips;
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
    dx_lane_release(lane);
    return NULL;
}

static int run_threads(void *(*body)(void *), const char *mode) {
    dx_region *region;
    int rc = dx_attach(region_name, &region);
    if (rc != DX_OK) {
        fprintf(stderr, "FAIL: attach '%s': %s\n", region_name, dx_strerror(rc));
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

// MARK: - Refusals

/// Writes an 8192-byte object under `name` with the given header words and attaches to it.
static int attach_forged(const char *name, uint64_t magic, uint32_t version, uint32_t lane_count) {
    char object[256];
    snprintf(object, sizeof object, "/dx.%s", name);
    int fd = shm_open(object, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        perror("shm_open");
        exit(1);
    }
    if (ftruncate(fd, 8192) != 0) exit(1);
    unsigned char *header = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (header == MAP_FAILED) exit(1);
    memcpy(header + 8, &version, 4);
    uint32_t header_size = 8192;
    memcpy(header + 12, &header_size, 4);
    memcpy(header + 20, &lane_count, 4);
    memcpy(header + 0, &magic, 8);
    munmap(header, 8192);
    dx_region *region = NULL;
    int rc = dx_attach(name, &region);
    shm_unlink(object);
    if (region) dx_detach(region);
    return rc;
}

static int refusals(const char *name) {
    const uint64_t magic = 0x4E4F494745525844ull;
    struct {
        const char *what;
        uint64_t magic;
        uint32_t version, lanes;
        int expected;
    } cases[] = {
        {"layout version 2", magic, 2, 8, DX_E_VERSION},
        {"layout version 0", magic, 0, 8, DX_E_VERSION},
        {"magic not yet stored", 0, 1, 8, DX_E_NOT_READY},
        {"another magic", 0x1122334455667788ull, 1, 8, DX_E_NOT_DX},
        {"version 1 with sizes that do not fit", magic, 1, 8, DX_E_SIZE},
        {"version 1 with 0 lanes", magic, 1, 0, DX_E_SIZE},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = attach_forged(name, cases[i].magic, cases[i].version, cases[i].lanes);
        bool ok = rc == cases[i].expected;
        if (ok && rc == DX_E_VERSION && dx_last_found_version() != cases[i].version) ok = false;
        printf("%s: %s -> %s\n", ok ? "ok" : "FAIL", cases[i].what, dx_strerror(rc));
        bad += !ok;
    }
    int rc = dx_attach("no.such.region.here", &(dx_region *){NULL});
    printf("%s: missing region -> %s\n", rc == DX_E_NO_REGION ? "ok" : "FAIL", dx_strerror(rc));
    bad += rc != DX_E_NO_REGION;
    rc = dx_attach("../etc", &(dx_region *){NULL});
    printf("%s: invalid name -> %s\n", rc == DX_E_INVALID_NAME ? "ok" : "FAIL", dx_strerror(rc));
    bad += rc != DX_E_INVALID_NAME;
    return bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "version") == 0) return refusals(argv[2]);
    bool untimed = argc == 5 && strcmp(argv[1], "bench-untimed") == 0;
    if (argc == 5 && (strcmp(argv[1], "check") == 0 || strcmp(argv[1], "bench") == 0 || untimed)) {
        region_name = argv[2];
        thread_count = atoi(argv[3]);
        if (thread_count < 1 || thread_count > 64) {
            fprintf(stderr, "threads must be 1...64\n");
            return 2;
        }
        if (strcmp(argv[1], "check") == 0) {
            calls_per_thread = atol(argv[4]);
            return run_threads(check_thread, "check");
        }
        seconds = atof(argv[4]);
        timed = !untimed;
        return run_threads(bench_thread, "bench");
    }
    fprintf(stderr, "usage: dxguest_test check|bench|bench-untimed NAME THREADS CALLS|SECONDS, or dxguest_test version NAME\n");
    return 2;
}
