// CShm: the few things Swift cannot import or express directly.
//
// - C11 atomics on raw shared memory (every access names its ordering),
// - the CPU-relax hint (`pause` on x86, `yield` on Arm),
// - futex waits and wakes, and locks the kernel releases when their holder dies,
// - shm_open / shm_unlink and a few Linux calls without a Swift overlay.
//
// Every symbol is prefixed CShm_. The atomics are static inline so that the Swift
// optimizer sees through them: the call path compiles to plain loads, stores and
// locked instructions.
//
// One error convention, for every function below that can fail:
//
// - A function that returns a status returns 0 on success or a positive errno value.
// - A function that returns a descriptor, a count or another non-negative value returns it,
//   or -errno.
// - errno itself is never part of a result: read nothing from it after a CShm_ call.
// - EINTR never comes out of the shim: every call that can be interrupted is retried (a sleep
//   with what remains of it), except the two bounded waits, CShm_futex_wait and
//   CShm_ring_submit_and_wait, which make one attempt and return EINTR like any early wake-up;
//   their callers loop on their own deadline anyway.
// - A query that has no errno to give (/proc, CPU masks) returns the value its comment names
//   for "unknown"; those functions say so.
//
// The Swift side follows the same rule for the system calls it makes itself: each goes through
// `retryingOnInterrupt` in Sources/DXCore/System/SystemError.swift.
#ifndef CSHM_H
#define CSHM_H

#include <stdint.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <sys/types.h>

// MARK: - CPU relax

/// One spin-wait hint: `pause` on x86, `yield` on Arm, nothing elsewhere.
static inline void CShm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

// MARK: - Atomics on shared memory (64-bit)

static inline uint64_t CShm_load_relaxed_u64(const void *p) {
    return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_relaxed);
}
static inline uint64_t CShm_load_acquire_u64(const void *p) {
    return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_acquire);
}
static inline uint64_t CShm_load_seqcst_u64(const void *p) {
    return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_seq_cst);
}
static inline void CShm_store_relaxed_u64(void *p, uint64_t v) {
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_relaxed);
}
static inline void CShm_store_release_u64(void *p, uint64_t v) {
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
}
static inline void CShm_store_seqcst_u64(void *p, uint64_t v) {
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_seq_cst);
}
/// Compare-and-swap with acquire-release ordering on success, acquire on failure.
/// Returns true when `*p` held `expected` and now holds `desired`.
static inline bool CShm_cas_acqrel_u64(void *p, uint64_t expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit((_Atomic uint64_t *)p, &expected, desired,
                                                   memory_order_acq_rel, memory_order_acquire);
}

// MARK: - Atomics on shared memory (32-bit)

static inline uint32_t CShm_load_relaxed_u32(const void *p) {
    return atomic_load_explicit((_Atomic uint32_t *)p, memory_order_relaxed);
}
static inline uint32_t CShm_load_acquire_u32(const void *p) {
    return atomic_load_explicit((_Atomic uint32_t *)p, memory_order_acquire);
}
static inline uint32_t CShm_load_seqcst_u32(const void *p) {
    return atomic_load_explicit((_Atomic uint32_t *)p, memory_order_seq_cst);
}
static inline void CShm_store_relaxed_u32(void *p, uint32_t v) {
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_relaxed);
}
static inline void CShm_store_release_u32(void *p, uint32_t v) {
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_release);
}
static inline void CShm_store_seqcst_u32(void *p, uint32_t v) {
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_seq_cst);
}

/// Compare-and-swap (32-bit), acquire-release on success, acquire on failure.
static inline bool CShm_cas_acqrel_u32(void *p, uint32_t expected, uint32_t desired) {
    return atomic_compare_exchange_strong_explicit((_Atomic uint32_t *)p, &expected, desired,
                                                   memory_order_acq_rel, memory_order_acquire);
}
/// Fetch-and-add (32-bit), sequentially consistent.
static inline uint32_t CShm_fetch_add_seqcst_u32(void *p, uint32_t v) {
    return atomic_fetch_add_explicit((_Atomic uint32_t *)p, v, memory_order_seq_cst);
}
/// Fetch-and-add (64-bit), sequentially consistent.
static inline uint64_t CShm_fetch_add_seqcst_u64(void *p, uint64_t v) {
    return atomic_fetch_add_explicit((_Atomic uint64_t *)p, v, memory_order_seq_cst);
}
/// Compare-and-swap (64-bit), sequentially consistent.
static inline bool CShm_cas_seqcst_u64(void *p, uint64_t expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit((_Atomic uint64_t *)p, &expected, desired,
                                                   memory_order_seq_cst, memory_order_seq_cst);
}

/// A full (sequentially consistent) fence.
static inline void CShm_fence_seqcst(void) {
    atomic_thread_fence(memory_order_seq_cst);
}

// MARK: - Clock

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call, no system call on x86_64 and aarch64).
uint64_t CShm_monotonic_ns(void);

/// The CPU's free-running counter: `rdtsc` on x86, `cntvct_el0` on aarch64, 0 elsewhere. Cheaper
/// than a clock call; its rate is calibrated by the caller (see CShm_ticks_usable).
static inline uint64_t CShm_ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    uint64_t value;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(value));
    return value;
#else
    return 0;
#endif
}

/// Whether CShm_ticks is a steady clock here: on x86 an invariant TSC (`constant_tsc` and
/// `nonstop_tsc` in /proc/cpuinfo), on aarch64 always; false elsewhere.
bool CShm_ticks_usable(void);

// MARK: - Futex (process-shared: no FUTEX_PRIVATE_FLAG)

/// Sleeps while the 32-bit word at `address` holds `expected`, for at most `timeout_ns`, measured
/// on CLOCK_MONOTONIC (FUTEX_WAIT's timeout is relative). One attempt, no retry. Returns 0 when
/// woken, or the errno: EAGAIN (the word differed), EINTR, ETIMEDOUT, EFAULT, or another.
int CShm_futex_wait(uint32_t *address, uint32_t expected, uint64_t timeout_ns);
/// Wakes up to `count` threads sleeping on `address`. Returns how many woke, or -errno.
int CShm_futex_wake(uint32_t *address, int count);
/// FUTEX_WAKE_PRIVATE: wakes waiters on a word in this process's own memory. Returns the number
/// woken or -errno.
int CShm_futex_wake_private(uint32_t *address, int count);
/// Sleeps `ns` nanoseconds (nanosleep, resumed with what remains after EINTR).
void CShm_sleep_ns(uint64_t ns);

// MARK: - Locks the kernel releases when their holder dies

/// Takes an open-file-description write lock (F_OFD_SETLK) on bytes [start, start + length) of
/// `fd`, without waiting. Returns 0, EAGAIN when another open file description holds a lock
/// there, or another errno. The lock lives as long as the open file description: until it is
/// unlocked, or the last descriptor and mapping of that description are gone (the process died).
int CShm_ofd_trylock(int fd, uint64_t start, uint64_t length);
/// Releases an F_OFD_SETLK lock on [start, start + length). Returns 0 or an errno.
int CShm_ofd_unlock(int fd, uint64_t start, uint64_t length);
/// Whether another open file description holds a lock on [start, start + length) of `fd`
/// (F_OFD_GETLK): 1 held, 0 free, or -errno.
int CShm_ofd_held(int fd, uint64_t start, uint64_t length);
/// `flock(fd, LOCK_EX | LOCK_NB)`. Returns 0, EWOULDBLOCK when another holds it, or an errno.
int CShm_flock_exclusive(int fd);
/// Opens the object behind `fd` again (`/proc/self/fd/N`, O_RDWR | O_CLOEXEC): a new open file
/// description of the same file, so that its locks are its own. Returns a descriptor or -errno.
int CShm_reopen(int fd);

// MARK: - io_uring (liburing), for the control socket

/// An io_uring instance; opaque to Swift.
typedef struct CShm_Ring CShm_Ring;

/// Creates a ring with `entries` submission entries into `*out`. Returns 0 or an errno (ENOSYS
/// or EPERM when io_uring is unavailable or forbidden).
int CShm_ring_create(unsigned entries, CShm_Ring **out);
/// Destroys a ring made by CShm_ring_create (NULL does nothing).
void CShm_ring_destroy(CShm_Ring *ring);
/// Queues an accept on `fd` (multishot when `multishot`). Returns 0, or EBUSY when the
/// submission queue is full.
int CShm_ring_accept(CShm_Ring *ring, int fd, uint64_t user_data, bool multishot);
/// Queues a recv of at most `length` bytes into `buffer`. Returns 0 or EBUSY.
int CShm_ring_recv(CShm_Ring *ring, int fd, void *buffer, size_t length, uint64_t user_data);
/// Queues a send of `length` bytes from `buffer` (MSG_NOSIGNAL). Returns 0 or EBUSY.
int CShm_ring_send(CShm_Ring *ring, int fd, const void *buffer, size_t length, uint64_t user_data);
/// Submits what is queued and waits up to `timeout_ns` for at least one completion.
/// Returns 0, ETIME on timeout, EINTR, or another errno.
int CShm_ring_submit_and_wait(CShm_Ring *ring, uint64_t timeout_ns);
/// Takes the next completion, if any: returns true and fills the out-parameters, or false.
bool CShm_ring_next(CShm_Ring *ring, uint64_t *user_data, int32_t *result, uint32_t *flags);
/// True when a completion says more will follow from the same request (multishot).
bool CShm_ring_more(uint32_t flags);
/// Whether the kernel's io_uring has IORING_OP_FUTEX_WAIT (Linux 6.7+): 1 yes, 0 no.
bool CShm_ring_has_futex(CShm_Ring *ring);
/// Queues a futex wait on the 32-bit word at `address` while it holds `expected` (liburing 2.3
/// has no helper; the SQE is filled by hand). `shared` waits on a word in shared memory (other
/// processes wake it); otherwise a process-private word. Its completion carries 0 when woken,
/// -EAGAIN when the word did not hold `expected`, -ECANCELED when cancelled. Returns 0 or EBUSY.
int CShm_ring_futex_wait(CShm_Ring *ring, uint32_t *address, uint32_t expected, bool shared, uint64_t user_data);
/// Queues the cancellation of the request queued with `target` as its user data; its own
/// completion carries `user_data`. Returns 0 or EBUSY.
int CShm_ring_cancel(CShm_Ring *ring, uint64_t target, uint64_t user_data);
/// Submits what is queued without waiting. Returns 0 or an errno.
int CShm_ring_submit(CShm_Ring *ring);

// MARK: - Truncation guard

/// Guards [base, base + size): a SIGBUS inside it (someone truncated the shared-memory object
/// under the mapping) maps a private zero page over the faulting page instead of killing the
/// process, and counts the fault. Up to 16 ranges. Returns 0, or ENOSPC when the table is full.
int CShm_guard_truncation(void *base, size_t size);
/// Removes a guard set by CShm_guard_truncation.
void CShm_unguard_truncation(void *base);
/// How many SIGBUS faults inside [base, base + size) the guard absorbed.
uint64_t CShm_truncation_faults(void *base);

// MARK: - Sockets

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`), or -errno.
int64_t CShm_peer_uid(int fd);
/// The pid, uid and gid of the process at the other end of a Unix socket (`SO_PEERCRED`, as of
/// its connect). Returns 0 or an errno.
int CShm_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);
/// Sends `length` bytes with descriptor `passed` attached (`SCM_RIGHTS`), without blocking
/// (MSG_DONTWAIT | MSG_NOSIGNAL). Returns the bytes sent, or -errno.
int64_t CShm_send_with_fd(int fd, const void *buffer, size_t length, int passed);
/// Receives up to `length` bytes and, when one came with them, a descriptor into `*passed`
/// (close-on-exec; -1 when none came; any further descriptors are closed). Returns the bytes
/// received (0 at end of file), or -errno.
int64_t CShm_recv_with_fd(int fd, void *buffer, size_t length, int *passed);
/// Whether the peer of a connected socket has hung up (`poll` for POLLRDHUP/POLLHUP, no wait):
/// 1 hung up, 0 connected, or -errno.
int CShm_socket_hung_up(int fd);
/// `accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)`: a descriptor, or -errno (-EAGAIN
/// when no client is waiting).
int CShm_accept_nonblocking(int fd);
/// A non-blocking, close-on-exec Unix stream socket bound to `path` (mode 0600) and listening.
/// Returns the descriptor, or -errno (ENAMETOOLONG when the path does not fit sockaddr_un).
int CShm_unix_listen(const char *path, int backlog);
/// A blocking, close-on-exec Unix stream socket connected to `path`, or -errno.
int CShm_unix_connect(const char *path);
/// The same, with every wait of the socket bounded by `timeout_ns` from the start (SO_SNDTIMEO and
/// SO_RCVTIMEO are set before `connect`, which a full listen backlog would otherwise block for
/// ever). Returns the descriptor or -errno (-EAGAIN when the host did not accept in time).
int CShm_unix_connect_within(const char *path, uint64_t timeout_ns);
/// Bytes sent on `fd` that its peer has not read yet (`ioctl(SIOCOUTQ)`), or -errno.
int CShm_socket_unread(int fd);
/// Sets SO_RCVTIMEO and SO_SNDTIMEO. Returns 0 or an errno.
int CShm_socket_timeouts(int fd, uint64_t timeout_ns);

// MARK: - Shared memory objects

/// `shm_open(name, flags, mode)`. Returns a descriptor or -errno.
int CShm_shm_open(const char *name, int flags, mode_t mode);
/// `shm_unlink(name)`. Returns 0 or an errno.
int CShm_shm_unlink(const char *name);

/// A sealed anonymous shared-memory object of `size` bytes (`memfd_create` with
/// MFD_ALLOW_SEALING | MFD_CLOEXEC, mode 0600, sized, then sealed with F_SEAL_SHRINK |
/// F_SEAL_GROW | F_SEAL_SEAL): nobody who receives it can change its size. Returns a descriptor
/// or -errno.
int CShm_memfd_sealed(const char *label, uint64_t size);
/// The seals on `fd` (F_GET_SEALS), or -errno.
int CShm_seals(int fd);
/// Whether the seals of a dx region are all there (shrink, grow, seal).
bool CShm_seals_complete(int seals);

// MARK: - Standard output

/// Makes stdout line-buffered (`setvbuf(stdout, NULL, _IOLBF, 0)`), also when it is a pipe or a
/// file. Call it before anything is written. (Swift 6 cannot name C's `stdout` safely.)
void CShm_line_buffer_stdout(void);

// MARK: - Processes and threads

/// The start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat),
/// or 0 when the process does not exist or the file cannot be parsed.
uint64_t CShm_process_start_time(pid_t pid);
/// User plus system CPU time of process `pid` in nanoseconds (fields 14 and 15 of
/// /proc/PID/stat), or -1 when it cannot be read (a query: no errno).
int64_t CShm_process_cpu_ns(pid_t pid);
/// CPU time of the calling process (all threads), in nanoseconds, or -1 when unknown.
int64_t CShm_self_cpu_ns(void);
/// A bare futex wake of another process, the kernel's part of waking a host's sleeping worker: a
/// child (forked; it runs only this C code and `_exit`s) sleeps on a shared word in 50 ms timed
/// waits; `idle_ms` later the caller stamps the time, sets the word and wakes it; the child stamps
/// when it runs. Returns the nanoseconds between the two, or 0 if the child could not be made.
uint64_t CShm_bare_process_wake_ns(uint32_t idle_ms);
/// True when process `pid` exists and is not a zombie: `kill(pid, 0)` succeeds (or fails
/// with EPERM) and /proc/PID/stat does not show state Z or X.
bool CShm_process_alive(pid_t pid);
/// Keeps other processes of the same user from reading this one's memory and descriptors
/// (`prctl(PR_SET_DUMPABLE, 0)`: /proc/PID/fd and ptrace need root then). Returns 0 or an errno.
int CShm_forbid_inspection(void);
/// Raises this process's soft limit of open descriptors to its hard limit. Returns the soft limit
/// now, or -errno.
int64_t CShm_raise_descriptor_limit(void);
/// Threads of the calling process (the Threads: line of /proc/self/status), or -1.
int CShm_self_threads(void);
/// Resident memory of the calling process in KiB (VmRSS), or -1.
int64_t CShm_self_rss_kb(void);
/// Open descriptors of the calling process (entries of /proc/self/fd), or -1.
int CShm_self_open_fds(void);
/// The number of CPUs the calling thread may run on.
int CShm_available_cpus(void);
/// True when the calling thread's affinity mask includes `cpu`.
bool CShm_cpu_allowed(int cpu);

/// Starts a detached-capable POSIX thread running `body(context)` with the given stack size.
/// Returns 0 or errno; the thread handle is written to `out`.
int CShm_thread_start(uint64_t *out, void *(*body)(void *), void *context, size_t stack_size);
/// Joins a thread started with CShm_thread_start. Returns 0 or errno.
int CShm_thread_join(uint64_t thread);
/// Pins the calling thread to one CPU (`pthread_setaffinity_np`). Returns 0 or an errno value.
int CShm_pin_self(int cpu);
/// The CPU the calling thread runs on (`sched_getcpu`), or -1 when unknown.
int CShm_current_cpu(void);
/// Moves the calling thread off `cpu` for one lane: its affinity becomes the mask it had before
/// any lane narrowed it, minus `cpu` (kept per thread, so repeated calls do not narrow it further).
/// `counted`: the lane already keeps the thread off a CPU (a move to another CPU). Does not narrow
/// when that would leave no CPU. Returns 0 (the lane counts) or an errno value.
int CShm_avoid_cpu(int cpu, bool counted);
/// One lane stops keeping the calling thread off a CPU; the last one gives it back its own mask.
void CShm_restore_affinity(void);

#endif
