// The guest side of a dx region, written from docs/LAYOUT.md (layout version 2).
// Section names below ("Validating", "Liveness", "Private regions", "Claim and release", "One call",
// "Turns") are that document's; "The parker" and the spin step are in dxwait.c and dxwait.h, as in
// Sources/DXCore/Wait; a private host's handshake is in dxconnect.c.
#define _GNU_SOURCE
#include "dxguest.h"
#include "dxatomic.h"
#include "dxconnect.h"
#include "dxwait.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// MARK: - Limits of our own (the region's offsets, sizes and limits are dxlayout.h's)

enum {
    MAX_NAME = 64,
    CALLS_BETWEEN_TURN_CHECKS = 64,
    MAX_REFUSAL = 512,                      ///< bytes of a private host's refusal we keep
};

/// How long dx_connect waits for a private host's reply ("Wait at most a few seconds (dx: 5 s)").
static const uint64_t HANDSHAKE_TIMEOUT_NS = 5000000000ull;
/// The longest sleep timeout a wait may have (valid_wait), so the longest a turn holder that waits
/// for its region's grant goes without renewing its lease.
static const uint64_t LONGEST_SLEEP_NS = 1000000000ull;

// MARK: - Small helpers

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/// Closes `fd` on an error path without losing the errno that DX_E_SYSTEM promises to keep.
static void close_keeping_errno(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
}

// MARK: - Locks ("Liveness: kernel locks")

/// F_OFD_SETLK or F_OFD_GETLK of `type` on bytes [start, start + length). Returns 0 or the errno;
/// `answer`, when given, gets the kernel's answer (F_OFD_GETLK).
static int ofd_lock(int fd, int command, short type, off_t start, off_t length, struct flock *answer) {
    struct flock lock;
    memset(&lock, 0, sizeof lock);  // l_pid must be 0 for OFD locks
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = start;
    lock.l_len = length;
    int rc;
    do { rc = fcntl(fd, command, &lock); } while (rc != 0 && errno == EINTR);
    if (answer) *answer = lock;
    return rc == 0 ? 0 : errno;
}

/// Whether another open file description holds a lock on the range (a write lock would conflict).
/// A failed query counts as held: nobody is declared dead on a guess, and every wait is bounded.
static bool lock_held(int fd, off_t start, off_t length) {
    struct flock answer;
    if (ofd_lock(fd, F_OFD_GETLK, F_WRLCK, start, length, &answer) != 0) return true;
    return answer.l_type != F_UNLCK;
}

/// A new open file description of the region behind `fd`. Not `dup`, which would share `fd`'s:
/// OFD locks of one description never conflict with each other, so two claims of this process
/// must not share one.
static int reopen(int fd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int claim;
    do { claim = open(path, O_RDWR | O_CLOEXEC); } while (claim < 0 && errno == EINTR);
    return claim;
}

// MARK: - Region

struct dx_region {
    char *base;
    size_t mapped;
    /// Kept open for the region's life: the host's lock is queried through it (a lock query through a
    /// descriptor of our own, which holds no lock, sees the host's), and each claim reopens it.
    int fd;
    /// A private region's connection to its host, open for the region's life (the host lives while
    /// it is open, and frees the region when it closes); -1 for a named region.
    int conn;
    uint32_t lane_count, capacity, stride, workers, handler;
    uint64_t size, own_pid;
};

static _Thread_local uint32_t found_version;
static _Thread_local char refusal[MAX_REFUSAL];

uint32_t dx_last_found_version(void) { return found_version; }
const char *dx_last_refusal(void) { return refusal; }

static bool valid_name(const char *name) {
    size_t length = strlen(name);
    if (length < 1 || length > MAX_NAME || name[0] == '.') return false;
    for (size_t i = 0; i < length; i++) {
        char c = name[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '.' ||
                  c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

/// "Ownership (guest)", on the descriptor we opened, not the path, so that what we check is what we
/// map: a name another user created first is refused, never followed.
static int check_owner(int fd, uid_t host_uid, struct stat *info) {
    if (fstat(fd, info) != 0) return DX_E_SYSTEM;
    if (info->st_uid != host_uid) return DX_E_WRONG_OWNER;
    if (!S_ISREG(info->st_mode) || (info->st_mode & 022) != 0) return DX_E_UNSAFE_MODE;
    return DX_OK;
}

/// The header's checks ("Validating (guest)"), on private copies.
static int validate(dx_region *r, size_t object_size) {
    char *h = r->base;
    uint64_t magic = load64(h + DX_HEADER_MAGIC, ACQUIRE);  // pairs with the host's release store, made last
    if (magic == 0) return DX_E_NOT_READY;
    if (magic != DX_MAGIC) return DX_E_NOT_DX;
    uint32_t version = load32(h + DX_HEADER_VERSION, RELAXED);
    if (version != DX_LAYOUT_VERSION) {  // another layout: read nothing else
        found_version = version;
        return DX_E_VERSION;
    }
    uint64_t lanes = load32(h + DX_HEADER_LANE_COUNT, RELAXED);
    uint64_t capacity = load32(h + DX_HEADER_SLOT_CAPACITY, RELAXED);
    uint64_t stride = load32(h + DX_HEADER_LANE_STRIDE, RELAXED);
    uint64_t workers = load32(h + DX_HEADER_WORKER_COUNT, RELAXED);
    uint64_t raw = load32(h + DX_HEADER_RAW_COUNT, RELAXED);
    uint64_t size = load64(h + DX_HEADER_REGION_SIZE, RELAXED);
    if (load32(h + DX_HEADER_HEADER_SIZE, RELAXED) != DX_HEADER_SIZE) return DX_E_SIZE;
    if (lanes < 1 || lanes > DX_MAX_LANES || capacity < 1 || capacity > DX_MAX_SLOT_CAPACITY) return DX_E_SIZE;
    if (stride != dx_lane_stride(capacity)) return DX_E_SIZE;
    if (workers < 1 || workers > DX_MAX_WORKERS || workers > lanes) return DX_E_SIZE;
    if (raw > DX_MAX_RAW_CHANNELS || raw > lanes) return DX_E_SIZE;
    uint64_t expected = dx_region_size(lanes, capacity, raw);
    if (size != expected || expected > object_size) return DX_E_SIZE;
    if (load64(h + DX_HEADER_LANES_OFFSET, RELAXED) != DX_HEADER_SIZE) return DX_E_SIZE;
    if (load64(h + DX_HEADER_RAW_OFFSET, RELAXED) != DX_HEADER_SIZE + lanes * stride) return DX_E_SIZE;
    r->lane_count = (uint32_t)lanes;
    r->capacity = (uint32_t)capacity;
    r->stride = (uint32_t)stride;
    r->workers = (uint32_t)workers;
    r->size = size;
    r->handler = load32(h + DX_HEADER_HANDLER, RELAXED);
    return DX_OK;
}

/// Whether a private region's connection is still open at the host's end ("Private regions",
/// Liveness): a poll that does not wait. A failed poll counts as open, as a failed lock query does.
static bool connection_open(int conn) {
    struct pollfd p = {.fd = conn, .events = POLLRDHUP};
    int rc;
    do { rc = poll(&p, 1, 0); } while (rc < 0 && errno == EINTR);
    if (rc <= 0) return true;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) == 0;
}

/// Why the host cannot answer, or DX_OK while it can ("Host alive (guest)"). The host lives while it
/// holds its lock on the magic (a private region's host: while the connection is open): the kernel
/// vouches for that, not the header, so a guest that writes "stopping" into the state fools nobody;
/// the state only names why a free lock is free. A system call: for attach, claim and slow paths only.
static int host_problem(const dx_region *r) {
    if (r->conn >= 0 ? connection_open(r->conn) : lock_held(r->fd, DX_LOCK_HOST_START, DX_LOCK_HOST_LENGTH))
        return DX_OK;
    // Acquire: pairs with the host's release store of its state.
    return load32(r->base + DX_HEADER_STATE, ACQUIRE) == DX_STATE_STOPPING ? DX_E_SHUTDOWN : DX_E_HOST_GONE;
}

/// A private region's descriptor must be sealed so that nobody can shrink it under our mapping (a
/// SIGBUS), grow it, or take the seals off ("Private regions", step 4).
static int check_seals(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    int needed = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    return seals >= 0 && (seals & needed) == needed ? DX_OK : DX_E_UNSAFE_MODE;
}

/// Everything after shm_open, or after a private host handed the descriptor over; `r->fd` is the
/// descriptor (and `r->conn` a private region's connection), which `r` owns from here.
static int attach_descriptor(dx_region *r, uid_t host_uid) {
    struct stat info;
    int rc = check_owner(r->fd, host_uid, &info);
    if (rc == DX_OK && r->conn >= 0) rc = check_seals(r->fd);
    if (rc != DX_OK) return rc;
    if (info.st_size < DX_HEADER_SIZE) return DX_E_NOT_READY;  // the host is between shm_open and ftruncate
    size_t size = (size_t)info.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (base == MAP_FAILED) return DX_E_SYSTEM;
    r->base = base;
    r->mapped = size;
    rc = validate(r, size);
    if (rc != DX_OK) return rc;
    return host_problem(r);
}

static int adopt(dx_region *r, uid_t host_uid, const dx_grant *grant, dx_region **out);

int dx_attach(const char *name, dx_region **out) { return dx_attach_as(name, getuid(), out); }

int dx_attach_as(const char *name, uid_t host_uid, dx_region **out) {
    if (!name || !out) return DX_E_ARGUMENT;
    *out = NULL;
    found_version = 0;
    if (host_uid == (uid_t)-1) host_uid = getuid();
    if (!valid_name(name)) return DX_E_INVALID_NAME;
    char object[MAX_NAME + 8];
    snprintf(object, sizeof object, "/dx.%s", name);
    dx_region *r = calloc(1, sizeof *r);
    if (!r) return DX_E_SYSTEM;
    r->conn = -1;
    r->fd = shm_open(object, O_RDWR | O_CLOEXEC, 0);
    if (r->fd < 0) {
        int error = errno;
        free(r);
        errno = error;
        if (error == ENOENT) return DX_E_NO_REGION;
        if (error == EACCES || error == EPERM) return DX_E_PERMISSION;
        return DX_E_SYSTEM;
    }
    return adopt(r, host_uid, NULL, out);
}

/// Checks and maps the object behind r->fd (attach_descriptor), and for a private region also
/// that the host's reply describes it; hands `r` to the caller, or detaches it on any failure.
static int adopt(dx_region *r, uid_t host_uid, const dx_grant *grant, dx_region **out) {
    int rc = attach_descriptor(r, host_uid);
    // The reply must describe the region it came with.
    if (rc == DX_OK && grant &&
        (grant->size != r->size || (grant->lanes >= 0 && (uint64_t)grant->lanes != r->lane_count) ||
         (grant->slot_size >= 0 && (uint64_t)grant->slot_size != r->capacity)))
        rc = DX_E_PROTOCOL;
    if (rc != DX_OK) {
        int error = errno;
        dx_detach(r);
        errno = error;
        return rc;
    }
    r->own_pid = (uint32_t)getpid();
    *out = r;
    return DX_OK;
}

// MARK: - Private regions ("Private regions (`dx-host --private`)")

int dx_connect(const char *name, int lanes, const char *socket_path, uid_t host_uid, dx_region **out) {
    if (!out) return DX_E_ARGUMENT;
    *out = NULL;
    found_version = 0;
    refusal[0] = 0;
    if (lanes < 0 || (!name && !socket_path)) return DX_E_ARGUMENT;
    if (host_uid == (uid_t)-1) host_uid = getuid();
    char path[108];  // sizeof(struct sockaddr_un.sun_path)
    if (socket_path) {
        if (strlen(socket_path) >= sizeof path) return DX_E_ARGUMENT;
        strcpy(path, socket_path);
    } else {
        if (!valid_name(name)) return DX_E_INVALID_NAME;
        if (!dx_default_socket_path(name, path, sizeof path)) return DX_E_ARGUMENT;
    }
    dx_grant grant;
    int rc = dx_handshake(path, lanes, host_uid, HANDSHAKE_TIMEOUT_NS, &grant, refusal, sizeof refusal);
    if (rc != DX_OK) return rc;
    dx_region *r = calloc(1, sizeof *r);
    if (!r) {
        int error = errno;
        close(grant.region);
        close(grant.conn);
        errno = error;
        return DX_E_SYSTEM;
    }
    r->fd = grant.region;
    r->conn = grant.conn;
    return adopt(r, host_uid, &grant, out);
}

int dx_open(const char *name, int lanes, const char *socket_path, uid_t host_uid, dx_region **out) {
    int rc = dx_attach_as(name, host_uid, out);
    if (rc != DX_E_NO_REGION) return rc;
    return dx_connect(name, lanes, socket_path, host_uid, out);
}

void dx_detach(dx_region *r) {
    if (!r) return;
    if (r->base) munmap(r->base, r->mapped);
    close(r->fd);
    if (r->conn >= 0) close(r->conn);  // a private host frees the region now
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
    wait.spin_min = spins_for(50000);
    wait.spin_max = spins_for(500000);
    wait.spin_start = spins_for(125000);
    wait.avoid_worker_cpu = 1;
    return wait;
}

dx_wait dx_wait_fair(void) {
    return (dx_wait){.spin_min = 2000, .spin_max = 20000, .spin_start = 5000, .yield_every = 128,
                     .sleep_timeout_ns = 50000000, .turn_calls = 4096, .turn_quantum_ns = 4000000};
}

dx_wait dx_wait_balanced(void) {
    return (dx_wait){.spin_min = 100, .spin_max = 5000, .spin_start = 2000, .yield_every = 128,
                     .sleep_timeout_ns = 50000000, .turn_calls = 0, .turn_quantum_ns = 4000000};
}

static bool valid_wait(const dx_wait *w) {
    return w->spin_min <= w->spin_max && w->spin_start >= w->spin_min && w->spin_start <= w->spin_max &&
           w->sleep_timeout_ns >= 1000000 && w->sleep_timeout_ns <= LONGEST_SLEEP_NS && w->turn_quantum_ns >= 10000 &&
           w->turn_quantum_ns <= 1000000000;
}

// MARK: - Lanes

struct dx_lane {
    dx_region *region;
    char *base, *doorbell, *turnstile;
    dx_wait wait;
    /// The claim's own open file description of the region, open while we hold the lane: its lock on
    /// the owner word tells the host and other guests that the lane's owner lives. -1 in a private region.
    int fd;
    uint64_t owner_word, sequence, timeout_ns;
    /// The running call's deadline; 0 until its first bounded wait fixes it (see call_deadline).
    uint64_t deadline;
    uint32_t budget, status;
    int failure;
    // Turns.
    bool holds_turn;
    uint64_t ticket, lease_start;
    uint32_t calls_until_check, calls_in_turn;
    bool avoiding;            // this lane keeps its thread off the worker's CPU (see keep_off_worker_cpu)
    uint32_t avoided_cpu;     // the CPU kept off while `avoiding`
    // Granted turns ("Private regions", Granted turns): the header's grant block when the region's
    // host grants turns (read once, at claim), else NULL; and its grant quantum, read with it.
    char *grant;
    uint64_t grant_quantum_ns;
};

static void bump(char *counter) {  // single writer: a relaxed load and store, no locked instruction
    store64(counter, load64(counter, RELAXED) + 1, RELAXED);
}

// MARK: - Claim and release ("Claim and release")

/// Takes the lane whose owner word is at `owner_offset` through the claim's description `*fd`
/// (opened on first use, reused while attempts fail): the lock first, then the owner word by CAS.
/// In a private region, whose guest is this one process, the CAS of a free word alone ("Claims in a
/// private region"): no description, no lock, and *fd stays -1. DX_OK with the word written in
/// *mine; DX_E_NO_LANE when a live guest holds the lock (a private region: the word) or the word
/// changed under us; DX_E_SYSTEM.
static int claim_owner(dx_region *r, size_t owner_offset, int *fd, uint64_t *mine) {
    bool private = r->conn >= 0;
    if (!private) {
        if (*fd < 0 && (*fd = reopen(r->fd)) < 0) return DX_E_SYSTEM;
        int rc = ofd_lock(*fd, F_OFD_SETLK, F_WRLCK, (off_t)owner_offset, DX_LOCK_OWNER_LENGTH, NULL);
        if (rc == EAGAIN || rc == EACCES) return DX_E_NO_LANE;  // its owner lives
        if (rc != 0) {
            errno = rc;
            return DX_E_SYSTEM;
        }
    }
    char *owner = r->base + owner_offset;
    // Holding the lock, no live process owns the lane: whatever the word holds is free or a dead
    // owner's. In a private region, a word with a pid half is another thread's of ours: leave it.
    // Acquire: pairs with the previous owner's release CAS.
    uint64_t word = load64(owner, ACQUIRE);
    if (private && word >> 32 != 0) return DX_E_NO_LANE;
    uint64_t claimed = r->own_pid << 32 | (uint32_t)(word + 1);
    // Acquire-release: the claim happens before our first request. A claimer racing us for a word
    // in the same state makes one of the two CASes fail.
    if (!cas64(owner, word, claimed, memory_order_acq_rel)) {
        if (!private) ofd_lock(*fd, F_OFD_SETLK, F_UNLCK, (off_t)owner_offset, DX_LOCK_OWNER_LENGTH, NULL);
        return DX_E_NO_LANE;
    }
    *mine = claimed;
    return DX_OK;
}

/// Frees the owner word (pid half 0, generation kept, so the next claim's word differs), then
/// closes the claim's description, which drops its lock (a private region's claim has none: -1).
/// In this order: nobody takes the lane while the lock is held, so nobody sees the word ours and
/// the lock free but a dead owner's.
static void release_owner(char *owner, uint64_t mine, int fd) {
    // Acquire-release: our last request and response happen before the next owner's claim. A failed
    // CAS means someone overwrote the word; the lock goes with the descriptor all the same.
    cas64(owner, mine, mine & 0xffffffffu, memory_order_acq_rel);
    if (fd >= 0) close(fd);
}

static dx_lane *new_lane(dx_region *r, uint32_t index, const dx_wait *wait, int fd, uint64_t mine,
                         uint64_t sequence) {
    dx_lane *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    uint32_t worker = index % r->workers;
    l->region = r;
    l->base = r->base + DX_HEADER_SIZE + (size_t)index * r->stride;
    l->doorbell = r->base + DX_HEADER_DOORBELLS + worker * DX_BLOCK;
    l->turnstile = r->base + DX_HEADER_TURNSTILES + worker * DX_TURNSTILE_STRIDE;
    l->wait = *wait;
    l->fd = fd;
    l->owner_word = mine;
    l->sequence = sequence;
    l->timeout_ns = 10000000000ull;
    l->budget = wait->spin_start;
    // Relaxed: the host writes both before it publishes the header, which we loaded with acquire
    // at attach. Only a private region's host grants turns; named regions leave the bytes zero.
    if (r->conn >= 0 && load32(r->base + DX_HEADER_GRANTS, RELAXED) == 1) {
        l->grant = r->base + DX_HEADER_GRANT;
        l->grant_quantum_ns = load64(r->base + DX_HEADER_GRANT_QUANTUM, RELAXED);
    }
    return l;
}

static void keep_off_worker_cpu(dx_lane *l);

int dx_lane_claim(dx_region *r, const dx_wait *wait, dx_lane **out) {
    if (!r || !out) return DX_E_ARGUMENT;
    *out = NULL;
    dx_wait chosen = wait ? *wait : dx_wait_auto();
    if (!valid_wait(&chosen)) return DX_E_ARGUMENT;
    int problem = host_problem(r);
    if (problem != DX_OK) return problem;
    int fd = -1;
    // Lanes whose word says free first; then the others: a lock we can take there means a dead owner.
    // A private region has no dead owners: its only guest is this process, alive.
    int last_pass = r->conn >= 0 ? 0 : 1;
    for (int dead_owners = 0; dead_owners <= last_pass; dead_owners++) {
        for (uint32_t index = 0; index < r->lane_count; index++) {
            size_t offset = DX_HEADER_SIZE + (size_t)index * r->stride;
            char *lane = r->base + offset;
            // Relaxed: only the order of the search; the lock and the CAS decide.
            if ((load64(lane + DX_LANE_OWNER, RELAXED) >> 32 != 0) != dead_owners) continue;
            uint64_t mine = 0;
            int rc = claim_owner(r, offset + DX_LANE_OWNER, &fd, &mine);
            if (rc == DX_E_NO_LANE) continue;
            if (rc != DX_OK) {
                if (fd >= 0) close_keeping_errno(fd);
                return rc;
            }
            // Acquire: pairs with the worker's and the last owner's seq-cst stores.
            uint64_t request = load64(lane + DX_LANE_REQUEST_SEQ, ACQUIRE);
            uint64_t response = load64(lane + DX_LANE_RESPONSE_SEQ, ACQUIRE);
            if (request != response) {  // an earlier owner died mid-call and the host has not answered yet
                release_owner(lane + DX_LANE_OWNER, mine, fd);
                fd = -1;
                continue;
            }
            dx_lane *l = new_lane(r, index, &chosen, fd, mine, response);
            if (!l) {
                int error = errno;
                release_owner(lane + DX_LANE_OWNER, mine, fd);
                errno = error;
                return DX_E_SYSTEM;
            }
            // A granted region's thread keeps off its worker's CPU from the claim on ("Granted
            // turns", placement), not from its first call.
            if (l->grant && l->wait.turn_calls != 0 && l->wait.avoid_worker_cpu) keep_off_worker_cpu(l);
            *out = l;
            return DX_OK;
        }
    }
    if (fd >= 0) close(fd);
    return DX_E_NO_LANE;
}

void *dx_lane_buffer(dx_lane *l) { return l->base + DX_LANE_PAYLOAD; }
uint32_t dx_lane_status(const dx_lane *l) { return l->status; }
void dx_lane_set_timeout(dx_lane *l, uint64_t timeout_ns) { l->timeout_ns = timeout_ns; }

/// The running call's deadline ("the call's deadline": its turn wait and its response wait share
/// it). Fixed by the call's first bounded wait rather than at its start, so that a call that needs
/// no wait reads no clock; the spinning before that wait is bounded by the spin budget.
static uint64_t call_deadline(dx_lane *l, uint64_t now) {
    if (l->deadline == 0) l->deadline = l->timeout_ns > UINT64_MAX - now ? UINT64_MAX : now + l->timeout_ns;
    return l->deadline;
}

// MARK: - Turns ("Turns (guest-side scheduling)")

uint64_t dx_turn_waiters(uint64_t next, uint64_t serving) {
    uint64_t queued = next - serving;  // the holder and its waiters
    if (queued == 0 || queued >= (1ull << 62)) return 0;
    return min64(queued - 1, DX_TURN_MAX_COUNTED_WAITERS);
}

uint64_t dx_turn_quantum_ns(uint64_t quantum_ns, uint64_t waiters) {
    uint64_t w = min64(waiters, DX_TURN_MAX_COUNTED_WAITERS);
    if (w <= DX_TURN_QUANTA_PER_ROUND) return quantum_ns;
    uint64_t shared = quantum_ns / w * DX_TURN_QUANTA_PER_ROUND, least = min64(quantum_ns, DX_TURN_QUANTUM_FLOOR_NS);
    return shared > least ? shared : least;
}

uint64_t dx_turn_stale_lease_ns(uint64_t quantum_ns, uint64_t waiters) {
    uint64_t quantum = dx_turn_quantum_ns(quantum_ns, waiters);
    return quantum > (UINT64_MAX - 1000000) / 2 ? UINT64_MAX : 2 * quantum + 1000000;
}

uint64_t dx_turn_quantum_in_grant_ns(uint64_t quantum_ns, uint64_t waiters, uint64_t grant_quantum_ns) {
    uint64_t w = min64(waiters, DX_TURN_MAX_COUNTED_WAITERS);
    uint64_t grant = min64(max64(grant_quantum_ns, DX_TURN_GRANT_QUANTUM_MIN_NS), DX_TURN_GRANT_QUANTUM_MAX_NS);
    return min64(dx_turn_quantum_ns(quantum_ns, w), max64(grant / (2 * (w + 1)), DX_TURN_GRANT_SHARE_FLOOR_NS));
}

/// Whether the region holds its worker's grant (a private host's granted turns). Acquire: pairs
/// with the host's release store of 1. Garbage other than 0 counts as granted: the host serves the
/// region only while it holds the grant, whatever the word says.
/// The grant word is a counter the host advances at every grant and revoke: odd while granted.
/// The longest step of a grant wait (a host that died is noticed within it).
static const uint64_t GRANT_WAIT_STEP_NS = 500000000ull;

static bool granted(const dx_lane *l) { return (load32(l->grant, ACQUIRE) & 1) != 0; }

static char *wake_slot(dx_lane *l, uint64_t ticket) {
    return l->turnstile + DX_TURN_WAKE_SLOTS + (ticket % DX_TURN_WAKE_SLOT_COUNT) * sizeof(uint32_t);
}

static void wake(dx_lane *l, uint64_t ticket) {
    char *slot = wake_slot(l, ticket);
    atomic_fetch_add_explicit(AT32(slot), 1, SEQ_CST);  // first, so a waiter about to sleep does not
    dx_futex_wake(slot, INT_MAX);  // every waiter of the slot re-checks; those whose ticket it is not sleep again
}

static void renew_lease(dx_lane *l, uint64_t now) {
    l->lease_start = now;
    l->calls_in_turn = 0;
    store64(l->turnstile + DX_TURN_LEASE, now, RELAXED);
}

static void pass_turn(dx_lane *l, uint64_t now) {
    store64(l->turnstile + DX_TURN_LEASE, now, RELAXED);  // the next holder's lease starts now
    if (cas64(l->turnstile + DX_TURN_SERVING, l->ticket, l->ticket + 1, SEQ_CST)) wake(l, l->ticket + 1);
}

/// Takes a ticket and waits until it is served. Returns DX_OK with the turn, or why the call cannot
/// go on: the call's deadline passed (the ticket is abandoned; waiters skip it like a dead one's)
/// or the host is gone. Nothing is published yet either way, so the lane stays usable.
static int acquire_turn(dx_lane *l) {
    char *serving = l->turnstile + DX_TURN_SERVING;
    l->ticket = atomic_fetch_add_explicit(AT64(l->turnstile + DX_TURN_NEXT), 1, SEQ_CST);
    char *slot = wake_slot(l, l->ticket);
    bool waited = false;
    int rc = DX_OK;
    for (;;) {
        uint32_t seen = load32(slot, SEQ_CST);  // before re-checking serving: a pass in between wakes us
        uint64_t served = load64(serving, SEQ_CST);
        if (served - l->ticket < (1ull << 62)) break;  // served, or already past us
        waited = true;
        // The stale period for the queue as it is now (this waiter included): it sizes the sleep,
        // and the lease is judged by the same period after it.
        uint64_t next = load64(l->turnstile + DX_TURN_NEXT, ACQUIRE);
        uint64_t stale_after = dx_turn_stale_lease_ns(l->wait.turn_quantum_ns, dx_turn_waiters(next, served));
        uint64_t start = now_ns(), deadline = call_deadline(l, start);
        if (start >= deadline) {
            rc = DX_E_TIMEOUT;
            break;
        }
        // Where the host grants turns, no shorter than four grant cycles (up to 1 s): a region
        // waits a cycle for its grant, and waiters waking more often would only preempt its worker
        // (they are woken when their turn comes; this only skips a dead holder).
        uint64_t sleep = stale_after;
        if (l->grant) {
            // Relaxed: an estimate the host refreshes at each grant; it sizes a bounded sleep only.
            uint64_t cycle = load64(l->grant + DX_HEADER_GRANT_CYCLE - DX_HEADER_GRANT, RELAXED);
            uint64_t four = cycle > UINT64_MAX / 4 ? UINT64_MAX : cycle * 4;
            sleep = max64(stale_after, min64(four, LONGEST_SLEEP_NS));
        }
        dx_futex_wait(slot, seen, min64(sleep, deadline - start));
        uint64_t holder = load64(serving, ACQUIRE);
        if (holder == l->ticket) break;
        uint64_t now = now_ns();
        // While a thread waits for the region's grant (want 1), the holder waits too: it is not
        // stale. It renews its lease at every step of that wait (at most 500 ms apart, see
        // await_grant), so a lease older than the sleep period and 1 s more is judged all the same. Without the grant and with nobody
        // wanting it, the holder stopped calling (or waits for a response, ~a grant cycle): judged
        // by the period that sized the sleep. Otherwise a holder that stopped calling, or an
        // abandoned ticket, would keep every waiter until its deadline: nobody would ask for the
        // grant, so it would never come.
        // In a granted region the lease is judged by the period that sized the sleep.
        uint64_t judged_after = l->grant ? sleep : stale_after;
        if (l->grant && !granted(l)) {
            // Relaxed: a hint, like the lease (the guest clears it when its wait ends, the host
            // when it grants).
            bool wanted = load32(l->grant + DX_HEADER_GRANT_WANT - DX_HEADER_GRANT, RELAXED) != 0;
            judged_after = sleep;
            if (wanted) judged_after = sleep > UINT64_MAX - LONGEST_SLEEP_NS ? UINT64_MAX : sleep + LONGEST_SLEEP_NS;
        }
        if (l->ticket - holder < (1ull << 62) && now - load64(l->turnstile + DX_TURN_LEASE, RELAXED) > judged_after) {
            // The holder neither renewed nor passed its turn: move the turn on by one ticket.
            store64(l->turnstile + DX_TURN_LEASE, now, RELAXED);
            if (cas64(serving, holder, holder + 1, SEQ_CST)) {
                if (holder + 1 == l->ticket) break;
                wake(l, holder + 1);
            }
        }
        rc = host_problem(l->region);
        if (rc != DX_OK) break;
    }
    if (waited) bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_TURN_WAITS);
    if (rc != DX_OK) return rc;
    l->holds_turn = true;
    renew_lease(l, now_ns());
    return DX_OK;
}

// The thread's own mask before any of its lanes narrowed it, and how many of its lanes keep off a
// worker's CPU now: per thread, not per lane, so that lanes released in any order give the thread
// back its own mask (a per-lane copy saved while another lane had narrowed it would keep it narrowed).
static _Thread_local cpu_set_t thread_mask;
static _Thread_local int thread_avoiders;

/// A hint: moves this thread off its worker's CPU (published by the worker) while it holds the turn
/// and runs there; in a granted region ("Granted turns", placement), whenever the CPU is known and
/// until the lane is released, waits included.
static void keep_off_worker_cpu(dx_lane *l) {
    uint32_t worker = load32(l->doorbell + DX_DOORBELL_WORKER_CPU, RELAXED);
    if (worker >= CPU_SETSIZE || (l->avoiding && l->avoided_cpu == worker)) return;
    if (!l->grant && sched_getcpu() != (int)worker) return;
    if (thread_avoiders == 0 && pthread_getaffinity_np(pthread_self(), sizeof thread_mask, &thread_mask) != 0) return;
    cpu_set_t set = thread_mask;
    CPU_CLR((int)worker, &set);
    if (CPU_COUNT(&set) > 0 && pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0) {
        if (!l->avoiding) thread_avoiders++;
        l->avoiding = true;
        l->avoided_cpu = worker;
    }
}

static void restore_affinity(dx_lane *l) {
    if (!l->avoiding) return;
    l->avoiding = false;
    if (--thread_avoiders == 0) pthread_setaffinity_np(pthread_self(), sizeof thread_mask, &thread_mask);
}

/// Keeps, passes or waits for the turn. Returns DX_OK, or why the call cannot go on (acquire_turn).
static int take_turns(dx_lane *l) {
    l->calls_until_check = CALLS_BETWEEN_TURN_CHECKS - 1;
    if (l->wait.avoid_worker_cpu) keep_off_worker_cpu(l);
    uint64_t now = now_ns();
    if (l->holds_turn) {
        l->calls_in_turn += CALLS_BETWEEN_TURN_CHECKS;
        uint64_t age = now - l->lease_start;
        bool calls_left = l->calls_in_turn < l->wait.turn_calls;
        // Within every quantum the rule can give: no need to count the waiters. Not where the host
        // grants turns: a share of a grant may be shorter than min(q, F).
        bool shortest = age < min64(l->wait.turn_quantum_ns, DX_TURN_QUANTUM_FLOOR_NS);
        if (calls_left && !l->grant && shortest) return DX_OK;
        // Acquire: pairs with the seq-cst updates of other guests.
        if (load64(l->turnstile + DX_TURN_SERVING, ACQUIRE) == l->ticket) {
            uint64_t next = load64(l->turnstile + DX_TURN_NEXT, ACQUIRE);
            uint64_t waiters = dx_turn_waiters(next, l->ticket);
            // Nobody waiting counts as 0: the whole quantum (or the whole grant).
            uint64_t q = l->wait.turn_quantum_ns;
            uint64_t quantum = l->grant ? dx_turn_quantum_in_grant_ns(q, waiters, l->grant_quantum_ns)
                                        : dx_turn_quantum_ns(q, waiters);
            if (calls_left && age < quantum) return DX_OK;
            if (next == l->ticket + 1) {
                renew_lease(l, now);  // the budget is spent, but nobody waits: keep going
                return DX_OK;
            }
            pass_turn(l, now);
        }
        l->holds_turn = false;  // passed, or taken by a waiter while we were away
        if (!l->grant) restore_affinity(l);  // a granted region's thread keeps off until release
    }
    return acquire_turn(l);
}

void dx_lane_release(dx_lane *l) {
    if (!l) return;
    if (l->holds_turn) pass_turn(l, now_ns());  // hand-on: a holder that leaves passes its turn
    restore_affinity(l);
    release_owner(l->base + DX_LANE_OWNER, l->owner_word, l->fd);
    free(l);
}

// MARK: - One call ("One call (guest)")

/// The lane's parker: we sleep on it, the worker posts it after storing our response.
static dx_parker lane_parker(dx_lane *l) {
    return (dx_parker){l->base + DX_LANE_GUEST_SLEEPING, l->base + DX_LANE_GUEST_WORD};
}

/// The worker's doorbell: it sleeps on it, guests post it after storing a request.
static dx_parker doorbell_parker(dx_lane *l) {
    return (dx_parker){l->doorbell + DX_DOORBELL_SLEEPING, l->doorbell + DX_DOORBELL_WORD};
}

/// Waits until the region holds its worker's grant ("Granted turns", Guest): says it wants one,
/// rings the doorbell so that an idle worker wakes, and sleeps on the grant word in bounded steps,
/// keeping a held turn's lease fresh and checking the host's liveness and the call's deadline.
/// Returns DX_OK with the grant, or why the call cannot go on; nothing is published either way, so
/// the lane stays usable. Counted as a turn wait.
static int await_grant(dx_lane *l) {
    char *want = l->grant + DX_HEADER_GRANT_WANT - DX_HEADER_GRANT;
    bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_TURN_WAITS);
    int rc = DX_OK;
    for (;;) {
        // The counter as seen before the want: a grant (or a revoke) after this read changes it,
        // and the futex wait below returns at once.
        uint32_t seen = load32(l->grant, ACQUIRE);
        if (seen & 1) break;
        // Seq-cst, and so is the doorbell's flag load after it: either the host's re-check before it
        // arms the doorbell sees the want, or we see the armed flag and post it.
        store32(want, 1, SEQ_CST);
        if (dx_unpark(doorbell_parker(l))) bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_DOORBELLS);
        uint64_t now = now_ns(), deadline = call_deadline(l, now);
        if (now >= deadline) {
            rc = DX_E_TIMEOUT;
            break;
        }
        if (l->holds_turn) renew_lease(l, now);  // waiting for the grant, not stale
        // The host wakes the word when it grants, stops or frees the region: the bounded step only
        // notices a host that died, so it is long (each wake-up preempts whatever runs).
        uint64_t step = max64(l->wait.sleep_timeout_ns, GRANT_WAIT_STEP_NS);
        dx_futex_wait(l->grant, seen, min64(step, deadline - now));
        if (granted(l)) break;
        rc = host_problem(l->region);
        if (rc != DX_OK) break;
    }
    // Whatever ended the wait, the want goes with it (relaxed): a want left set would keep asking
    // the host for grants nobody uses.
    store32(want, 0, RELAXED);
    // The holder's share of the grant starts with the grant, not at the last step.
    if (rc == DX_OK && l->holds_turn) renew_lease(l, now_ns());
    return rc;
}

/// After the spin budget: bounded sleeps on the lane's parker, checking the host's lock and the
/// call's deadline between them. A response that arrived meanwhile wins over either.
static int sleep_for_response(dx_lane *l, uint64_t seq) {
    char *response_seq = l->base + DX_LANE_RESPONSE_SEQ;
    l->budget = l->budget / 2 > l->wait.spin_min ? l->budget / 2 : l->wait.spin_min;
    bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_SLEEPS);
    // A holder about to sleep passes its turn when someone waits for it (LAYOUT.md, "Turns": before
    // sleeping for a response), so that the worker's other lanes keep moving; the next call queues again.
    if (l->holds_turn && load64(l->turnstile + DX_TURN_SERVING, ACQUIRE) == l->ticket &&
        load64(l->turnstile + DX_TURN_NEXT, ACQUIRE) != l->ticket + 1) {
        pass_turn(l, now_ns());
        l->holds_turn = false;
        restore_affinity(l);
        l->calls_until_check = 0;
    }
    for (;;) {
        uint64_t now = now_ns(), deadline = call_deadline(l, now);
        // Acquire: pairs with the worker's seq-cst store of the response sequence.
        if (now >= deadline) return load64(response_seq, ACQUIRE) == seq ? DX_OK : DX_E_TIMEOUT;
        // The parker's re-check is seq-cst: pairs with the worker's seq-cst store of the response
        // sequence, which it makes before its seq-cst load of our flag.
        uint64_t timeout = min64(l->wait.sleep_timeout_ns, deadline - now);
        if (dx_park(lane_parker(l), response_seq, seq, timeout) == DX_PARK_READY) return DX_OK;
        if (load64(response_seq, ACQUIRE) == seq) return DX_OK;  // makes the response visible
        int problem = host_problem(l->region);
        if (problem != DX_OK) return load64(response_seq, ACQUIRE) == seq ? DX_OK : problem;
    }
}

/// The check of a long spin (every 2^20 spins: with a large spin budget, a wait may never sleep).
static int spin_check(dx_lane *l, uint64_t seq) {
    int problem = host_problem(l->region);
    uint64_t now = now_ns();
    if (problem == DX_OK && now >= call_deadline(l, now)) problem = DX_E_TIMEOUT;
    // Acquire: take the response if it came meanwhile.
    if (problem != DX_OK && load64(l->base + DX_LANE_RESPONSE_SEQ, ACQUIRE) == seq) return DX_OK;
    return problem;
}

static int await_response(dx_lane *l, uint64_t seq) {
    char *response_seq = l->base + DX_LANE_RESPONSE_SEQ;
    dx_spin_wait spin = dx_spin_wait_start(l->budget, l->wait.yield_every);
    for (;;) {
        if (load64(response_seq, ACQUIRE) == seq) {  // pairs with the host's seq-cst store
            uint32_t max = l->wait.spin_max;
            if (l->budget < max) l->budget += (max - l->budget) / 16 > 1 ? (max - l->budget) / 16 : 1;
            bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_SPIN_WINS);
            return DX_OK;
        }
        enum dx_spin_step step = dx_spin_step(&spin);
        if (step == DX_SPIN_EXHAUSTED) return sleep_for_response(l, seq);
        if (step == DX_SPIN_YIELDED) bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_YIELDS);
        if ((spin.spins & 0xfffff) == 0) {
            int problem = spin_check(l, seq);
            if (problem != DX_OK) return problem;
        }
    }
}

int dx_lane_call(dx_lane *l, size_t request_length, size_t *response_length) {
    if (!l) return DX_E_ARGUMENT;
    if (l->failure != DX_OK) return DX_E_BROKEN;
    if (request_length > l->region->capacity) return DX_E_TOO_LARGE;
    l->deadline = 0;  // a new call: its first bounded wait fixes its deadline
    if (l->wait.turn_calls != 0) {
        if (l->calls_until_check == 0) {
            // Nothing is published yet: a turn that never came fails this call and leaves the lane usable.
            int rc = take_turns(l);
            if (rc != DX_OK) return rc;
        } else {
            l->calls_until_check -= 1;
        }
    }
    // A private host serves one region of its worker at a time: wait for this region's grant,
    // holding the turn (if any), before anything is published.
    if (l->grant && !granted(l)) {
        int rc = await_grant(l);
        if (rc != DX_OK) return rc;
    }
    uint64_t seq = ++l->sequence;
    store32(l->base + DX_LANE_REQUEST_LENGTH, (uint32_t)request_length, RELAXED);
    // Seq-cst: publishes the request (the worker loads it with acquire) and orders it before the
    // seq-cst load of the worker's sleeping flag in dx_unpark, as the parker requires.
    store64(l->base + DX_LANE_REQUEST_SEQ, seq, SEQ_CST);
    if (dx_unpark(doorbell_parker(l))) bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_DOORBELLS);
    bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_CALLS);
    int rc = await_response(l, seq);
    if (rc != DX_OK) {
        l->failure = rc;  // the lane's sequence is now unknown: release it and claim another
        bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_ERRORS);
        return rc;
    }
    l->status = load32(l->base + DX_LANE_STATUS, RELAXED);  // ordered by the acquire that ended the wait
    uint32_t length = load32(l->base + DX_LANE_RESPONSE_LENGTH, RELAXED);
    if (l->status != 0 || length > l->region->capacity) {
        bump(l->base + DX_LANE_GUEST_COUNTERS + DX_COUNTER_ERRORS);
        return l->status != 0 ? DX_E_REJECTED : DX_E_BAD_RESPONSE;
    }
    if (response_length) *response_length = length;
    return DX_OK;
}

int dx_call(dx_lane *l, const void *request, size_t request_length, void *response, size_t response_capacity,
            size_t *response_length) {
    if (!l || (request_length && !request) || (response_capacity && !response)) return DX_E_ARGUMENT;
    if (request_length > l->region->capacity) return DX_E_TOO_LARGE;
    if (request_length) memcpy(l->base + DX_LANE_PAYLOAD, request, request_length);
    size_t length = 0;
    int rc = dx_lane_call(l, request_length, &length);
    if (rc != DX_OK) return rc;
    size_t count = length < response_capacity ? length : response_capacity;
    if (count) memcpy(response, l->base + DX_LANE_PAYLOAD, count);
    if (response_length) *response_length = count;
    return DX_OK;
}

const char *dx_strerror(int error) {
    switch (error) {
    case DX_OK: return "ok";
    case DX_E_INVALID_NAME: return "invalid region name";
    case DX_E_NO_REGION: return "no such region or host socket (is the host running?)";
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
    case DX_E_TIMEOUT: return "timed out waiting for the turn, the grant, the response or the host's reply";
    case DX_E_SHUTDOWN: return "the host shut down";
    case DX_E_HOST_GONE: return "the host is gone";
    case DX_E_BROKEN: return "an earlier call on this lane failed";
    case DX_E_ARGUMENT: return "invalid argument";
    case DX_E_WRONG_OWNER: return "the region (or the host's socket) belongs to another user than the host's";
    case DX_E_UNSAFE_MODE: return "the region is not a regular file, or others may write it, or it is not sealed";
    case DX_E_REFUSED: return "the host refused to give a region";
    case DX_E_PROTOCOL: return "the host's reply does not follow the protocol";
    default: return "unknown error";
    }
}
