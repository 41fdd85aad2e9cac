#define _GNU_SOURCE
#include "CShm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <poll.h>
#include <dirent.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <sys/mman.h>
#include <liburing.h>
#include <linux/futex.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t CShm_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool CShm_ticks_usable(void) {
#if defined(__x86_64__) || defined(__i386__)
    FILE *file = fopen("/proc/cpuinfo", "re");
    if (!file) return false;
    char line[4096];
    bool constant = false, nonstop = false;
    while (fgets(line, sizeof line, file)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    fclose(file);
    return constant && nonstop;
#elif defined(__aarch64__)
    return true;
#else
    return false;
#endif
}

int CShm_futex_wait(uint32_t *address, uint32_t expected, uint64_t timeout_ns) {
    struct timespec timeout = {
        .tv_sec = (time_t)(timeout_ns / 1000000000ull),
        .tv_nsec = (long)(timeout_ns % 1000000000ull),
    };
    long rc = syscall(SYS_futex, address, FUTEX_WAIT, expected, &timeout, NULL, 0);
    return rc == 0 ? 0 : errno;
}

int CShm_futex_wake(uint32_t *address, int count) {
    long rc = syscall(SYS_futex, address, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc >= 0 ? (int)rc : -errno;
}

int CShm_futex_wake_private(uint32_t *address, int count) {
    long rc = syscall(SYS_futex, address, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
    return rc >= 0 ? (int)rc : -errno;
}

void CShm_sleep_ns(uint64_t ns) {
    struct timespec request = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    struct timespec remaining;
    while (nanosleep(&request, &remaining) != 0 && errno == EINTR) request = remaining;
}

static int ofd_lock(int fd, int command, short type, uint64_t start, uint64_t length, struct flock *out) {
    struct flock lock;
    memset(&lock, 0, sizeof lock);
    lock.l_type = type;
    lock.l_whence = SEEK_SET;
    lock.l_start = (off_t)start;
    lock.l_len = (off_t)length;
    int rc;
    do { rc = fcntl(fd, command, &lock); } while (rc != 0 && errno == EINTR);
    if (out) *out = lock;
    return rc == 0 ? 0 : errno;
}

int CShm_ofd_trylock(int fd, uint64_t start, uint64_t length) {
    int rc = ofd_lock(fd, F_OFD_SETLK, F_WRLCK, start, length, NULL);
    return rc == EACCES ? EAGAIN : rc;
}

int CShm_ofd_unlock(int fd, uint64_t start, uint64_t length) {
    return ofd_lock(fd, F_OFD_SETLK, F_UNLCK, start, length, NULL);
}

int CShm_ofd_held(int fd, uint64_t start, uint64_t length) {
    struct flock lock;
    int rc = ofd_lock(fd, F_OFD_GETLK, F_WRLCK, start, length, &lock);
    if (rc) return -rc;
    return lock.l_type == F_UNLCK ? 0 : 1;
}

int CShm_flock_exclusive(int fd) {
    int rc;
    do { rc = flock(fd, LOCK_EX | LOCK_NB); } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : errno;
}

int CShm_reopen(int fd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int rc;
    do { rc = open(path, O_RDWR | O_CLOEXEC); } while (rc < 0 && errno == EINTR);
    return rc >= 0 ? rc : -errno;
}

int CShm_shm_open(const char *name, int flags, mode_t mode) {
    int fd;
    do { fd = shm_open(name, flags, mode); } while (fd < 0 && errno == EINTR);
    return fd >= 0 ? fd : -errno;
}

int CShm_shm_unlink(const char *name) {
    return shm_unlink(name) == 0 ? 0 : errno;
}

/// Reads /proc/PID/stat and returns a pointer just past the ")" that closes the command
/// name (the name may itself contain spaces and parentheses), or NULL.
static char *proc_stat_fields(pid_t pid, char *buffer, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd;
    do { fd = open(path, O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    if (fd < 0) return NULL;
    ssize_t n;
    do { n = read(fd, buffer, size - 1); } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return NULL;
    buffer[n] = 0;
    char *close_paren = strrchr(buffer, ')');
    return close_paren ? close_paren + 1 : NULL;
}

/// Field `index` (1-based, as in proc(5)) of /proc/PID/stat; fields 1 and 2 are pid and comm.
static int proc_stat_field(pid_t pid, int index, unsigned long long *out) {
    char buffer[1024];
    char *p = proc_stat_fields(pid, buffer, sizeof buffer);
    if (!p) return -1;
    int field = 3;
    while (*p) {
        while (*p == ' ') p++;
        if (field == index) {
            char *end;
            errno = 0;
            *out = strtoull(p, &end, 10);
            return (end == p || errno) ? -1 : 0;
        }
        while (*p && *p != ' ') p++;
        field++;
    }
    return -1;
}

uint64_t CShm_process_start_time(pid_t pid) {
    unsigned long long start;
    return proc_stat_field(pid, 22, &start) == 0 ? (uint64_t)start : 0;
}

int64_t CShm_process_cpu_ns(pid_t pid) {
    unsigned long long utime, stime;
    if (proc_stat_field(pid, 14, &utime) != 0 || proc_stat_field(pid, 15, &stime) != 0) return -1;
    long ticks = sysconf(_SC_CLK_TCK);
    if (ticks <= 0) return -1;
    return (int64_t)((utime + stime) * (1000000000ull / (unsigned long long)ticks));
}

int64_t CShm_self_cpu_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

bool CShm_process_alive(pid_t pid) {
    if (pid <= 0) return false;
    if (kill(pid, 0) != 0 && errno != EPERM) return false;
    char buffer[1024];
    char *p = proc_stat_fields(pid, buffer, sizeof buffer);
    if (!p) return true;  // exists, but /proc is not readable: trust kill()
    while (*p == ' ') p++;
    return *p != 'Z' && *p != 'X';
}

int CShm_available_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return (int)sysconf(_SC_NPROCESSORS_ONLN);
    return CPU_COUNT(&set);
}

bool CShm_cpu_allowed(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof set, &set) != 0) return false;
    return CPU_ISSET(cpu, &set);
}

int CShm_thread_start(uint64_t *out, void *(*body)(void *), void *context, size_t stack_size) {
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc) return rc;
    if (stack_size) pthread_attr_setstacksize(&attr, stack_size);
    pthread_t thread;
    rc = pthread_create(&thread, &attr, body, context);
    pthread_attr_destroy(&attr);
    if (rc == 0) *out = (uint64_t)thread;
    return rc;
}

int CShm_pin_self(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

int CShm_current_cpu(void) {
    return sched_getcpu();
}

// The thread's own mask before any lane narrowed it, and how many lanes keep it off a CPU now:
// per thread, so that lanes released in any order give it back its own mask.
static _Thread_local cpu_set_t saved_affinity;
static _Thread_local int avoiders;

int CShm_avoid_cpu(int cpu, bool counted) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    if (avoiders == 0) {
        int rc = pthread_getaffinity_np(pthread_self(), sizeof saved_affinity, &saved_affinity);
        if (rc) return rc;
    }
    cpu_set_t set = saved_affinity;
    CPU_CLR(cpu, &set);
    int rc = CPU_COUNT(&set) == 0 ? 0 : pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (rc == 0 && !counted) avoiders++;
    return rc;
}

void CShm_restore_affinity(void) {
    if (avoiders == 0) return;
    if (--avoiders == 0) pthread_setaffinity_np(pthread_self(), sizeof saved_affinity, &saved_affinity);
}

int CShm_thread_join(uint64_t thread) {
    return pthread_join((pthread_t)thread, NULL);
}

// MARK: - io_uring

// io_uring futex operations (Linux 6.7), which liburing 2.3's headers do not name.
#define CSHM_OP_FUTEX_WAIT 51
#define CSHM_FUTEX2_SIZE_U32 0x02u
#define CSHM_FUTEX2_PRIVATE 128u
#define CSHM_FUTEX_BITSET_MATCH_ANY 0xffffffffull

struct CShm_Ring {
    struct io_uring ring;
};

int CShm_ring_create(unsigned entries, CShm_Ring **out) {
    CShm_Ring *ring = calloc(1, sizeof *ring);
    if (!ring) return ENOMEM;
    int rc = io_uring_queue_init(entries, &ring->ring, 0);
    if (rc < 0) {
        free(ring);
        return -rc;
    }
    *out = ring;
    return 0;
}

void CShm_ring_destroy(CShm_Ring *ring) {
    if (!ring) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

static struct io_uring_sqe *next_sqe(CShm_Ring *ring) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) {
        io_uring_submit(&ring->ring);
        sqe = io_uring_get_sqe(&ring->ring);
    }
    return sqe;
}

bool CShm_ring_has_futex(CShm_Ring *ring) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring->ring);
    if (!probe) return false;
    bool supported = io_uring_opcode_supported(probe, CSHM_OP_FUTEX_WAIT);
    io_uring_free_probe(probe);
    return supported;
}

int CShm_ring_futex_wait(CShm_Ring *ring, uint32_t *address, uint32_t expected, bool shared, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (!sqe) return EBUSY;
    // What liburing 2.5's io_uring_prep_futex_wait fills: fd = futex2 flags, addr = the word,
    // off = the expected value, addr3 = the bitset mask, op flags 0.
    io_uring_prep_rw(CSHM_OP_FUTEX_WAIT, sqe, (int)(CSHM_FUTEX2_SIZE_U32 | (shared ? 0 : CSHM_FUTEX2_PRIVATE)),
                     address, 0, expected);
    sqe->rw_flags = 0;
    sqe->addr3 = CSHM_FUTEX_BITSET_MATCH_ANY;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShm_ring_cancel(CShm_Ring *ring, uint64_t target, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (!sqe) return EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShm_ring_submit(CShm_Ring *ring) {
    int rc = io_uring_submit(&ring->ring);
    return rc < 0 ? -rc : 0;
}

int CShm_ring_accept(CShm_Ring *ring, int fd, uint64_t user_data, bool multishot) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (!sqe) return EBUSY;
    if (multishot) io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    else io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShm_ring_recv(CShm_Ring *ring, int fd, void *buffer, size_t length, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (!sqe) return EBUSY;
    io_uring_prep_recv(sqe, fd, buffer, length, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShm_ring_send(CShm_Ring *ring, int fd, const void *buffer, size_t length, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (!sqe) return EBUSY;
    io_uring_prep_send(sqe, fd, buffer, length, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShm_ring_submit_and_wait(CShm_Ring *ring, uint64_t timeout_ns) {
    struct __kernel_timespec timeout = {
        .tv_sec = (long long)(timeout_ns / 1000000000ull),
        .tv_nsec = (long long)(timeout_ns % 1000000000ull),
    };
    struct io_uring_cqe *cqe = NULL;
    int rc = io_uring_submit_and_wait_timeout(&ring->ring, &cqe, 1, &timeout, NULL);
    return rc < 0 ? -rc : 0;
}

bool CShm_ring_next(CShm_Ring *ring, uint64_t *user_data, int32_t *result, uint32_t *flags) {
    struct io_uring_cqe *cqe = NULL;
    if (io_uring_peek_cqe(&ring->ring, &cqe) != 0 || !cqe) return false;
    *user_data = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    *flags = cqe->flags;
    io_uring_cqe_seen(&ring->ring, cqe);
    return true;
}

bool CShm_ring_more(uint32_t flags) {
    return (flags & IORING_CQE_F_MORE) != 0;
}

int64_t CShm_peer_uid(int fd) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -errno;
    return (int64_t)credentials.uid;
}

int CShm_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return errno;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

int64_t CShm_send_with_fd(int fd, const void *buffer, size_t length, int passed) {
    struct iovec vector = { .iov_base = (void *)buffer, .iov_len = length };
    union { char bytes[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1,
                              .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &passed, sizeof(int));
    ssize_t sent;
    do { sent = sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent >= 0 ? (int64_t)sent : -(int64_t)errno;
}

int64_t CShm_recv_with_fd(int fd, void *buffer, size_t length, int *passed) {
    *passed = -1;
    struct iovec vector = { .iov_base = buffer, .iov_len = length };
    union { char bytes[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1,
                              .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
    ssize_t received;
    do { received = recvmsg(fd, &message, MSG_CMSG_CLOEXEC); } while (received < 0 && errno == EINTR);
    if (received < 0) return -(int64_t)errno;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int descriptor;
            memcpy(&descriptor, CMSG_DATA(header) + i * sizeof(int), sizeof(int));
            if (*passed < 0) *passed = descriptor; else close(descriptor);
        }
    }
    return (int64_t)received;
}

int CShm_socket_hung_up(int fd) {
    struct pollfd entry = { .fd = fd, .events = POLLRDHUP };
    int rc;
    do { rc = poll(&entry, 1, 0); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -errno;
    return (entry.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

int CShm_accept_nonblocking(int fd) {
    int client;
    do { client = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); } while (client < 0 && errno == EINTR);
    return client >= 0 ? client : -errno;
}

static int unix_address(const char *path, struct sockaddr_un *address) {
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address->sun_path) return -ENAMETOOLONG;
    strcpy(address->sun_path, path);
    return 0;
}

int CShm_unix_listen(const char *path, int backlog) {
    struct sockaddr_un address;
    int rc = unix_address(path, &address);
    if (rc) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    mode_t previous = umask(0177);  // the socket file is created 0600
    rc = bind(fd, (struct sockaddr *)&address, sizeof address);
    umask(previous);
    if (rc != 0 || listen(fd, backlog) != 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

int CShm_unix_connect(const char *path) {
    struct sockaddr_un address;
    int rc = unix_address(path, &address);
    if (rc) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    do { rc = connect(fd, (struct sockaddr *)&address, sizeof address); } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

int CShm_unix_connect_within(const char *path, uint64_t timeout_ns) {
    struct sockaddr_un address;
    int rc = unix_address(path, &address);
    if (rc) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    rc = CShm_socket_timeouts(fd, timeout_ns);
    if (rc == 0) {
        do { rc = connect(fd, (struct sockaddr *)&address, sizeof address) == 0 ? 0 : errno; } while (rc == EINTR);
    }
    if (rc != 0) {
        close(fd);
        return -(rc == EINPROGRESS ? EAGAIN : rc);
    }
    return fd;
}

int CShm_socket_timeouts(int fd, uint64_t timeout_ns) {
    struct timeval timeout = {
        .tv_sec = (time_t)(timeout_ns / 1000000000ull),
        .tv_usec = (suseconds_t)((timeout_ns % 1000000000ull) / 1000),
    };
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0) return errno;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0) return errno;
    return 0;
}

// MARK: - Truncation guard

#define GUARD_SLOTS 16
static struct {
    _Atomic(uintptr_t) base;
    _Atomic(size_t) size;
    _Atomic uint64_t faults;
} guards[GUARD_SLOTS];

static void on_sigbus(int signal_number, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t base = atomic_load(&guards[i].base);
        size_t size = atomic_load(&guards[i].size);
        if (base && address >= base && address < base + size) {
            uintptr_t page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
            void *page = (void *)(address & ~(page_size - 1));
            // mmap is a plain system call on Linux and safe here in practice.
            if (mmap(page, page_size, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
                atomic_fetch_add(&guards[i].faults, 1);
                return;
            }
        }
    }
    struct sigaction fallback;
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    sigaction(signal_number, &fallback, NULL);
    raise(signal_number);
}

int CShm_guard_truncation(void *base, size_t size) {
    static _Atomic int installed;
    if (!atomic_exchange(&installed, 1)) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&action.sa_mask);
        sigaction(SIGBUS, &action, NULL);
    }
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t expected = 0;
        if (atomic_compare_exchange_strong(&guards[i].base, &expected, (uintptr_t)1)) {
            atomic_store(&guards[i].faults, 0);
            atomic_store(&guards[i].size, size);
            atomic_store(&guards[i].base, (uintptr_t)base);
            return 0;
        }
    }
    return ENOSPC;
}

void CShm_unguard_truncation(void *base) {
    for (int i = 0; i < GUARD_SLOTS; i++) {
        if (atomic_load(&guards[i].base) == (uintptr_t)base) {
            atomic_store(&guards[i].size, 0);
            atomic_store(&guards[i].base, 0);
        }
    }
}

uint64_t CShm_truncation_faults(void *base) {
    for (int i = 0; i < GUARD_SLOTS; i++) {
        if (atomic_load(&guards[i].base) == (uintptr_t)base) return atomic_load(&guards[i].faults);
    }
    return 0;
}

void CShm_line_buffer_stdout(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
}

int CShm_socket_unread(int fd) {
    int queued = 0;
    return ioctl(fd, SIOCOUTQ, &queued) == 0 ? queued : -errno;
}

// MARK: - Sealed anonymous objects and process facts

int CShm_memfd_sealed(const char *label, uint64_t size) {
    int fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    int rc = 0;
    if (fchmod(fd, 0600) != 0) rc = errno;
    else if (ftruncate(fd, (off_t)size) != 0) rc = errno;
    else if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) rc = errno;
    else if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL) != 0) rc = errno;
    if (rc) {
        close(fd);
        return -rc;
    }
    return fd;
}

int CShm_seals(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 ? seals : -errno;
}

bool CShm_seals_complete(int seals) {
    int needed = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    return seals >= 0 && (seals & needed) == needed;
}

int64_t CShm_raise_descriptor_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -errno;
    if (limit.rlim_cur < limit.rlim_max) {
        struct rlimit raised = {.rlim_cur = limit.rlim_max, .rlim_max = limit.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
    }
    return limit.rlim_cur == RLIM_INFINITY ? INT64_MAX : (int64_t)limit.rlim_cur;
}

int CShm_forbid_inspection(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 ? 0 : errno;
}

static long status_field(const char *name) {
    FILE *file = fopen("/proc/self/status", "re");
    if (!file) return -1;
    char line[256];
    long value = -1;
    size_t length = strlen(name);
    while (fgets(line, sizeof line, file)) {
        if (strncmp(line, name, length) == 0 && line[length] == ':') {
            value = strtol(line + length + 1, NULL, 10);
            break;
        }
    }
    fclose(file);
    return value;
}

int CShm_self_threads(void) { return (int)status_field("Threads"); }

int64_t CShm_self_rss_kb(void) { return (int64_t)status_field("VmRSS"); }

int CShm_self_open_fds(void) {
    DIR *directory = opendir("/proc/self/fd");
    if (!directory) return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(directory))) {
        if (entry->d_name[0] != '.') count++;
    }
    closedir(directory);
    return count - 1;  // the directory's own descriptor
}

// MARK: - A bare cross-process wake (the idle check's yardstick)

uint64_t CShm_bare_process_wake_ns(uint32_t idle_ms) {
    struct words { _Atomic uint32_t word; char pad[60]; _Atomic uint64_t woke; };
    struct words *w = mmap(NULL, sizeof *w, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED) return 0;
    atomic_store(&w->word, 0);
    atomic_store(&w->woke, 0);
    pid_t child = fork();
    if (child < 0) {
        munmap(w, sizeof *w);
        return 0;
    }
    if (child == 0) {
        // The child: raw system calls only (the parent may have had other threads).
        while (atomic_load(&w->word) == 0) {
            struct timespec step = {0, 50000000};
            syscall(SYS_futex, &w->word, FUTEX_WAIT, 0, &step, NULL, 0);
        }
        atomic_store(&w->woke, CShm_monotonic_ns());
        _exit(0);
    }
    usleep(idle_ms * 1000u);
    uint64_t start = CShm_monotonic_ns();
    atomic_store(&w->word, 1);
    syscall(SYS_futex, &w->word, FUTEX_WAKE, 1, NULL, NULL, 0);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    uint64_t woke = atomic_load(&w->woke);
    munmap(w, sizeof *w);
    return woke > start ? woke - start : 0;
}
