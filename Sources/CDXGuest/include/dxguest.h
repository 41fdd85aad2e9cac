// dxguest: the guest side of a dx region, in C.
//
// Written from docs/LAYOUT.md (layout version 2) for programs that are not in Swift. It attaches to
// a region a dx host published (dx_attach), or asks a private host (`dx-host --private`) for a
// region of its own over the host's socket (dx_connect), claims a lane per thread, and makes calls
// with the same wait as the Swift guest: spin with a CPU-relax hint, sched_yield now and then, an
// adaptive spin budget, then bounded sleeps on the lane's parker (a futex word in the region, no
// libc object); guest threads of one serving worker take turns, and in a private region whose host
// grants turns, a call first waits for the region's grant. The host's and every lane owner's
// liveness is a kernel lock (an open-file-description lock on the region), never a pid; a private
// region's host lives while the connection that brought the region is open. It needs only libc and
// pthreads:
//
//     cc -O2 -std=c11 -pthread -I Sources/CDXGuest/include Sources/CDXGuest/*.c your.c
//
// Example:
//
//     dx_region *region;
//     dx_lane *lane;
//     if (dx_attach("demo", &region) != DX_OK) ...;
//     if (dx_lane_claim(region, NULL, &lane) != DX_OK) ...;
//     char answer[64];
//     size_t length;
//     int rc = dx_call(lane, "hello", 5, answer, sizeof answer, &length);
//     dx_lane_release(lane);
//     dx_detach(region);
//
// Errors are negative return codes (enum dx_error); dx_strerror names them. Calls allocate nothing,
// take no lock and make no system call unless a side has to sleep. A region keeps a descriptor of
// the region object open, and each claimed lane of a named region one more (its lock says the
// lane's owner lives); a private region keeps its connection open instead, and its lanes none.
// A lane belongs to one thread at a time; a region may be shared by every thread of the process.
#ifndef DXGUEST_H
#define DXGUEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dxlayout.h"  // DX_LAYOUT_VERSION, the layout this library implements, and the region's offsets

#ifdef __cplusplus
extern "C" {
#endif

enum dx_error {
    DX_OK = 0,
    DX_E_INVALID_NAME = -1,  ///< not 1-64 characters of [A-Za-z0-9._-], or starts with '.'
    DX_E_NO_REGION = -2,     ///< no region of that name (or no private host on the socket): is the host running?
    DX_E_PERMISSION = -3,    ///< the region object cannot be opened by this user
    DX_E_NOT_READY = -4,     ///< the host has not published the region yet: try again
    DX_E_NOT_DX = -5,        ///< the object is not a dx region
    DX_E_VERSION = -6,       ///< the region has another layout version
    DX_E_SIZE = -7,          ///< a size in the header is invalid or the object is too small
    DX_E_SYSTEM = -8,        ///< a system call failed (errno is kept)
    DX_E_NO_LANE = -9,       ///< every lane is claimed
    DX_E_TOO_LARGE = -10,    ///< the request is larger than the lane's capacity
    DX_E_REJECTED = -11,     ///< the host answered with an error status (dx_lane_status says which)
    DX_E_BAD_RESPONSE = -12, ///< the response's length is outside the lane
    DX_E_TIMEOUT = -13,      ///< no turn, grant or response within the call timeout (or no reply from a private host)
    DX_E_SHUTDOWN = -14,     ///< the host shut down (its lock, or connection, is gone and it said it was stopping)
    DX_E_HOST_GONE = -15,    ///< the host is gone (its lock, or connection, is gone: it died)
    DX_E_BROKEN = -16,       ///< an earlier call on this lane failed; claim another lane
    DX_E_ARGUMENT = -17,     ///< a NULL pointer or an invalid wait configuration
    DX_E_WRONG_OWNER = -18,  ///< the region object (or a private host's peer) has another uid than the host's
    DX_E_UNSAFE_MODE = -19,  ///< the region object is not a regular file, or group or others may write it,
                             ///< or (a private region) it is not sealed against shrinking, growing and resealing
    DX_E_REFUSED = -20,      ///< a private host refused to give a region (dx_last_refusal says why)
    DX_E_PROTOCOL = -21,     ///< a private host's reply is not what docs/LAYOUT.md says, or disagrees with its region
};

/// How a guest waits for its response. dx_wait_auto() is the default (NULL), as in the Swift guest.
typedef struct dx_wait {
    uint32_t spin_min;        ///< the adaptive spin budget never falls below this
    uint32_t spin_max;        ///< ... nor grows above this
    uint32_t spin_start;      ///< the budget of the first wait
    uint32_t yield_every;      ///< sched_yield every this many spins; 0 never
    uint64_t sleep_timeout_ns; ///< the longest single sleep (1 ms ... 1 s)
    uint32_t turn_calls;       ///< calls per turn while other guests of the worker wait; 0: no turns
    uint64_t turn_quantum_ns;  ///< the longest a turn lasts
    int avoid_worker_cpu;      ///< a turn holder keeps off the CPU its worker publishes (see LAYOUT.md)
} dx_wait;

typedef struct dx_region dx_region;
typedef struct dx_lane dx_lane;

/// The `auto` preset, the default, as in the Swift guest: the first call measures what one spin
/// costs here (~2.5 ms, once per process) and sets the budget to 50...500 µs of spinning (start
/// 125 µs); turns as in `fair`; and a turn holder that runs on its serving worker's CPU moves off it
/// for the turn (its affinity minus that CPU, given back at the pass).
dx_wait dx_wait_auto(void);
/// The `fair` preset: spins 2000...20000 (start 5000), yield every 128, 50 ms sleeps, turns of
/// 4096 calls or 4 ms.
dx_wait dx_wait_fair(void);
/// The `balanced` preset (the tuning study's): spins 100...5000 (start 2000), yield every 128,
/// no turns.
dx_wait dx_wait_balanced(void);

/// Attaches to the region the host published as `name`: checks that the object belongs to this
/// process's uid and that nobody else may write it, validates its header, and checks that the
/// host holds its lock. On success *region must be released with dx_detach after its last lane.
int dx_attach(const char *name, dx_region **region);
/// dx_attach for a host that runs as another user: the object must belong to `host_uid`
/// ((uid_t)-1: this process's uid).
int dx_attach_as(const char *name, uid_t host_uid, dx_region **region);
/// Asks the private host (`dx-host --private`) of `name` for a region of this process's own, over
/// its socket: `socket_path`, or by default `$XDG_RUNTIME_DIR/dx/<name>.sock`, else
/// `/tmp/dx-<uid>/<name>.sock` (`name` may be NULL when `socket_path` is given). The host must run
/// as `host_uid` ((uid_t)-1: this process's uid), checked on the connection (SO_PEERCRED) and on
/// the region's descriptor, which must also be sealed; its header is validated as dx_attach's.
/// `lanes` is the number of lanes to ask for, 0 for the host's default. The connection stays open
/// until dx_detach: it is the region's life for both sides, so the host learns at once that the
/// guest has gone, and the guest that the host has. Waits at most 5 s for the host's reply.
/// DX_E_REFUSED when the host says no (dx_last_refusal has its sentence).
int dx_connect(const char *name, int lanes, const char *socket_path, uid_t host_uid, dx_region **region);
/// dx_attach_as when the host published `/dev/shm/dx.<name>`, else dx_connect, as the Swift guest's
/// `Region.open`: a guest that is told only a name finds either kind of host. `lanes` and
/// `socket_path` matter only for a private host.
int dx_open(const char *name, int lanes, const char *socket_path, uid_t host_uid, dx_region **region);
/// Unmaps the region and closes its descriptor (and a private region's connection, which frees it
/// at the host). Release every lane first.
void dx_detach(dx_region *region);

/// The region's layout version as found by the last dx_attach or dx_connect in this thread that
/// failed with DX_E_VERSION (0 otherwise).
uint32_t dx_last_found_version(void);
/// The private host's sentence for the last dx_connect (or dx_open) in this thread that failed with
/// DX_E_REFUSED ("" otherwise), such as "lanes must be between 1 and 64, not 100000".
const char *dx_last_refusal(void);

size_t dx_region_lane_count(const dx_region *region);
/// The largest request or response, in bytes.
size_t dx_region_capacity(const dx_region *region);
/// The handler the host announced: 1 echo, 2 checksum (FNV-1a 64), 0xFFFF other.
uint32_t dx_region_handler(const dx_region *region);

/// Claims a free lane for the calling thread, or one whose owner died. `wait` may be NULL (auto).
int dx_lane_claim(dx_region *region, const dx_wait *wait, dx_lane **lane);
/// Releases the lane (and passes this thread's turn on), and closes the claim's descriptor.
void dx_lane_release(dx_lane *lane);

/// The lane's buffer: write a request into it and call dx_lane_call; the response is then in
/// the same buffer. Its size is dx_region_capacity.
void *dx_lane_buffer(dx_lane *lane);
/// One round trip in place: the request is the first `request_length` bytes of the buffer. On
/// success *response_length is the response's length.
int dx_lane_call(dx_lane *lane, size_t request_length, size_t *response_length);
/// One round trip with copies: sends `request`, copies up to `response_capacity` bytes of the
/// response into `response` and sets *response_length to the number copied.
int dx_call(dx_lane *lane, const void *request, size_t request_length, void *response,
            size_t response_capacity, size_t *response_length);
/// The status word of the last response (1 bad length, 2 bad sequence, 3 handler failed, 4 cancelled).
uint32_t dx_lane_status(const dx_lane *lane);
/// The longest a call waits, for its turn (and a private region's grant) and its response together
/// (default 10 s). A turn or grant that does not come in time fails the call with DX_E_TIMEOUT before
/// anything is sent, and the lane stays usable; a response that does not come in time breaks the lane
/// (DX_E_BROKEN after).
void dx_lane_set_timeout(dx_lane *lane, uint64_t timeout_ns);

const char *dx_strerror(int error);

/// The turn rule (docs/LAYOUT.md, "Turns"), as the lanes apply it; exported for tests and for
/// callers that size their own timeouts. k: a round of turns lasts at most k quanta (until the
/// floor); F: the shortest quantum the rule gives; W: the most waiters counted.
enum { DX_TURN_QUANTA_PER_ROUND = 4, DX_TURN_MAX_COUNTED_WAITERS = 1024 };
#define DX_TURN_QUANTUM_FLOOR_NS 200000ull
/// Guests waiting behind the holder: next - serving - 1, clamped to 0...W; 0 when next is at or
/// behind serving (mod 2^64, a difference of 2^62 or more counts as behind). Guest-written words:
/// a hint that sizes the quantum and the stale period, nothing else.
uint64_t dx_turn_waiters(uint64_t next, uint64_t serving);
/// The effective quantum for a holder with `waiters` behind it: q while waiters <= k, else
/// max(q / w * k, min(q, F)) with w = min(waiters, W). w * quantum <= max(k * q, w * min(q, F)).
uint64_t dx_turn_quantum_ns(uint64_t quantum_ns, uint64_t waiters);
/// The stale-lease period for that count: 2 * dx_turn_quantum_ns(quantum_ns, waiters) + 1 ms.
uint64_t dx_turn_stale_lease_ns(uint64_t quantum_ns, uint64_t waiters);

/// Granted turns (docs/LAYOUT.md, "Private regions", Granted turns): the header's grant quantum G is
/// host-written, so clamped to DX_TURN_GRANT_QUANTUM_MIN_NS...DX_TURN_GRANT_QUANTUM_MAX_NS, and a
/// holder's share of a grant is never below DX_TURN_GRANT_SHARE_FLOOR_NS.
#define DX_TURN_GRANT_QUANTUM_MIN_NS 10000ull
#define DX_TURN_GRANT_QUANTUM_MAX_NS 1000000000ull
#define DX_TURN_GRANT_SHARE_FLOOR_NS 20000ull
/// The effective quantum in a region whose host grants turns: min(dx_turn_quantum_ns(quantum_ns, w),
/// max(G / (2 (w + 1)), 20 us)), w = min(waiters, W) and G = grant_quantum_ns clamped to 10 us...1 s:
/// half an equal share, so that every waiting thread of the guest gets a turn within one grant with
/// room for the hand-offs.
uint64_t dx_turn_quantum_in_grant_ns(uint64_t quantum_ns, uint64_t waiters, uint64_t grant_quantum_ns);

#ifdef __cplusplus
}
#endif
#endif
