// The C guest's handshake with a private host: "Private regions (`dx-host --private`)" in
// docs/LAYOUT.md, steps 1-3 (see dxconnect.h). Section names below are that document's.
#define _GNU_SOURCE
#include "dxconnect.h"
#include "dxguest.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

// MARK: - Limits of our own

enum {
    MAX_LINE = 65536,     ///< the longest line either side sends, without its '\n'
    MAX_DESCRIPTORS = 8,  ///< room for descriptors in one recvmsg; any beyond the first are closed
    MAX_DEPTH = 32,       ///< nesting of unknown values we skip
};

static void close_keeping_errno(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
}

// MARK: - The socket

bool dx_default_socket_path(const char *name, char *path, size_t capacity) {
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    int length = runtime && runtime[0] ? snprintf(path, capacity, "%s/dx/%s.sock", runtime, name)
                                       : snprintf(path, capacity, "/tmp/dx-%u/%s.sock", (unsigned)getuid(), name);
    return length > 0 && (size_t)length < capacity;
}

/// connect(2), bounded by the socket's SO_SNDTIMEO (a Unix socket's connect waits that long for
/// room in a full backlog). DX_OK or the dx_error for its errno.
static int connect_to(int conn, const char *path) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    size_t length = strlen(path);
    if (length == 0 || length >= sizeof address.sun_path) return DX_E_ARGUMENT;
    memcpy(address.sun_path, path, length + 1);
    int rc;
    do { rc = connect(conn, (struct sockaddr *)&address, sizeof address); } while (rc != 0 && errno == EINTR);
    if (rc == 0 || errno == EISCONN) return DX_OK;  // EISCONN: an interrupted attempt got through
    if (errno == ENOENT || errno == ECONNREFUSED) return DX_E_NO_REGION;  // nobody listens there
    if (errno == EACCES || errno == EPERM) return DX_E_PERMISSION;
    if (errno == EAGAIN) return DX_E_TIMEOUT;
    return DX_E_SYSTEM;
}

/// Sends `line` whole. A host that refused us at accept may have closed its side already: EPIPE
/// and ECONNRESET are left to the reply (its one error line, or the end of the stream).
static int send_line(int conn, const char *line, size_t length) {
    while (length > 0) {
        ssize_t sent = send(conn, line, length, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        if (sent < 0 && (errno == EPIPE || errno == ECONNRESET)) return DX_OK;
        if (sent < 0) return errno == EAGAIN ? DX_E_TIMEOUT : DX_E_SYSTEM;
        line += sent;
        length -= (size_t)sent;
    }
    return DX_OK;
}

/// Keeps the first descriptor of the reply in *kept and closes every other one.
static void collect_descriptors(struct msghdr *message, int *kept) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(message); c; c = CMSG_NXTHDR(message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (*kept < 0) *kept = fd;
            else close(fd);
        }
    }
}

/// Reads until the first '\n' (at most MAX_LINE bytes before it) or `deadline`, with recvmsg, keeping
/// the first descriptor that comes with the bytes (MSG_CMSG_CLOEXEC). Returns DX_OK with the line's
/// length (without '\n') in *length, DX_E_HOST_GONE when the stream ends first, DX_E_PROTOCOL for a
/// longer line, DX_E_TIMEOUT or DX_E_SYSTEM. *fd is the caller's to close whatever the outcome.
static int read_reply(int conn, char *line, size_t *length, int *fd, uint64_t deadline) {
    size_t have = 0;
    for (;;) {
        char *newline = memchr(line, '\n', have);
        if (newline) {
            *length = (size_t)(newline - line);
            return DX_OK;
        }
        if (have > MAX_LINE) return DX_E_PROTOCOL;
        uint64_t now = now_ns();
        if (now >= deadline) return DX_E_TIMEOUT;
        struct pollfd readable = {.fd = conn, .events = POLLIN};
        int ready = poll(&readable, 1, (int)((deadline - now + 999999) / 1000000));
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return DX_E_SYSTEM;
        if (ready == 0) continue;  // the deadline decides
        union {  // aligned for struct cmsghdr
            char bytes[CMSG_SPACE(MAX_DESCRIPTORS * sizeof(int))];
            struct cmsghdr header;
        } control;
        struct iovec into = {.iov_base = line + have, .iov_len = MAX_LINE + 1 - have};
        struct msghdr message = {
            .msg_iov = &into, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes};
        ssize_t got = recvmsg(conn, &message, MSG_CMSG_CLOEXEC);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got < 0) return errno == ECONNRESET ? DX_E_HOST_GONE : DX_E_SYSTEM;
        collect_descriptors(&message, fd);  // descriptors beyond our room were closed by the kernel (MSG_CTRUNC)
        if (got == 0) return DX_E_HOST_GONE;
        have += (size_t)got;
    }
}

// MARK: - The reply line: one JSON object, keys in any order, unknown keys ignored

typedef struct {
    const char *at, *end;
} cursor;

static void skip_space(cursor *c) {
    while (c->at < c->end && (*c->at == ' ' || *c->at == '\t' || *c->at == '\r' || *c->at == '\n')) c->at++;
}

static bool take(cursor *c, char expected) {
    skip_space(c);
    if (c->at >= c->end || *c->at != expected) return false;
    c->at++;
    return true;
}

static bool take_word(cursor *c, const char *word) {
    skip_space(c);
    size_t length = strlen(word);
    if ((size_t)(c->end - c->at) < length || memcmp(c->at, word, length) != 0) return false;
    c->at += length;
    return true;
}

static int hex4(cursor *c) {
    if (c->end - c->at < 4) return -1;
    int value = 0;
    for (int i = 0; i < 4; i++) {
        char h = *c->at++;
        int digit = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (digit < 0) return -1;
        value = value * 16 + digit;
    }
    return value;
}

/// Appends `code` as UTF-8 when it fits (with the terminating NUL); a sentence is cut, not garbled.
static void put_utf8(char *out, size_t capacity, size_t *length, uint32_t code) {
    char bytes[4];
    size_t count;
    if (code < 0x80) bytes[0] = (char)code, count = 1;
    else if (code < 0x800) bytes[0] = (char)(0xC0 | code >> 6), bytes[1] = (char)(0x80 | (code & 0x3F)), count = 2;
    else if (code < 0x10000)
        bytes[0] = (char)(0xE0 | code >> 12), bytes[1] = (char)(0x80 | (code >> 6 & 0x3F)),
        bytes[2] = (char)(0x80 | (code & 0x3F)), count = 3;
    else
        bytes[0] = (char)(0xF0 | code >> 18), bytes[1] = (char)(0x80 | (code >> 12 & 0x3F)),
        bytes[2] = (char)(0x80 | (code >> 6 & 0x3F)), bytes[3] = (char)(0x80 | (code & 0x3F)), count = 4;
    if (*length + count >= capacity) return;
    memcpy(out + *length, bytes, count);
    *length += count;
    out[*length] = 0;
}

/// A string, decoded into `out` (cut to fit; NULL: only skipped).
static bool parse_string(cursor *c, char *out, size_t capacity) {
    size_t length = 0;
    if (out && capacity) out[0] = 0;
    if (!take(c, '"')) return false;
    while (c->at < c->end) {
        unsigned char byte = (unsigned char)*c->at++;
        if (byte == '"') return true;
        if (byte < 0x20) return false;
        if (byte != '\\') {
            if (out && length + 1 < capacity) out[length++] = (char)byte, out[length] = 0;
            continue;
        }
        if (c->at >= c->end) return false;
        uint32_t code;
        switch (*c->at++) {
        case '"': code = '"'; break;
        case '\\': code = '\\'; break;
        case '/': code = '/'; break;
        case 'b': code = '\b'; break;
        case 'f': code = '\f'; break;
        case 'n': code = '\n'; break;
        case 'r': code = '\r'; break;
        case 't': code = '\t'; break;
        case 'u': {
            int unit = hex4(c);
            if (unit < 0) return false;
            code = (uint32_t)unit;
            if (code >= 0xD800 && code < 0xDC00 && c->end - c->at >= 6 && c->at[0] == '\\' && c->at[1] == 'u') {
                cursor low = {c->at + 2, c->end};
                int second = hex4(&low);
                if (second >= 0xDC00 && second < 0xE000) {
                    code = 0x10000 + ((code - 0xD800) << 10) + ((uint32_t)second - 0xDC00);
                    c->at = low.at;
                }
            }
            if (code >= 0xD800 && code < 0xE000) code = 0xFFFD;  // a lone surrogate
            break;
        }
        default: return false;
        }
        if (out) put_utf8(out, capacity, &length, code);
    }
    return false;
}

/// A number; *integer says whether it is a non-negative integer below 2^63, then in *value.
static bool parse_number(cursor *c, uint64_t *value, bool *integer) {
    skip_space(c);
    bool negative = c->at < c->end && *c->at == '-', whole = true, digits = false;
    if (negative) c->at++;
    uint64_t number = 0;
    for (; c->at < c->end && *c->at >= '0' && *c->at <= '9'; c->at++) {
        digits = true;
        if (number > (UINT64_C(1) << 62) / 5) whole = false;  // would pass 2^63 - 1 soon: not ours
        number = number * 10 + (uint64_t)(*c->at - '0');
    }
    if (!digits) return false;
    if (c->at < c->end && *c->at == '.') {
        whole = false;
        c->at++;
        if (c->at >= c->end || *c->at < '0' || *c->at > '9') return false;
        while (c->at < c->end && *c->at >= '0' && *c->at <= '9') c->at++;
    }
    if (c->at < c->end && (*c->at == 'e' || *c->at == 'E')) {
        whole = false;
        c->at++;
        if (c->at < c->end && (*c->at == '+' || *c->at == '-')) c->at++;
        if (c->at >= c->end || *c->at < '0' || *c->at > '9') return false;
        while (c->at < c->end && *c->at >= '0' && *c->at <= '9') c->at++;
    }
    *integer = whole && !negative && number < (UINT64_C(1) << 63);
    *value = number;
    return true;
}

/// Any value (of a key we do not know).
static bool skip_value(cursor *c, int depth) {
    skip_space(c);
    if (c->at >= c->end || depth > MAX_DEPTH) return false;
    uint64_t number;
    bool integer;
    switch (*c->at) {
    case '"': return parse_string(c, NULL, 0);
    case 't': return take_word(c, "true");
    case 'f': return take_word(c, "false");
    case 'n': return take_word(c, "null");
    case '[':
        c->at++;
        if (take(c, ']')) return true;
        do {
            if (!skip_value(c, depth + 1)) return false;
        } while (take(c, ','));
        return take(c, ']');
    case '{':
        c->at++;
        if (take(c, '}')) return true;
        do {
            if (!parse_string(c, NULL, 0) || !take(c, ':') || !skip_value(c, depth + 1)) return false;
        } while (take(c, ','));
        return take(c, '}');
    default: return parse_number(c, &number, &integer);
    }
}

typedef struct {
    bool has_version, has_ok, ok, has_size, other_command;
    uint64_t version, size;
    int64_t lanes, slot_size;
} reply;

static bool integer_value(cursor *c, uint64_t *value) {
    bool integer = false;
    return parse_number(c, value, &integer) && integer;
}

/// Reads the reply's keys into *r, and the "error" sentence into `error`. False: not a JSON object,
/// or a key of ours with a value of another type.
static bool parse_reply(const char *line, size_t length, reply *r, char *error, size_t error_capacity) {
    cursor c = {line, line + length};
    *r = (reply){.lanes = -1, .slot_size = -1};
    if (!take(&c, '{')) return false;
    if (!take(&c, '}')) {
        do {
            char key[16];
            if (!parse_string(&c, key, sizeof key) || !take(&c, ':')) return false;
            uint64_t number = 0;
            bool ok;
            if (strcmp(key, "v") == 0) ok = r->has_version = integer_value(&c, &r->version);
            else if (strcmp(key, "ok") == 0) ok = r->has_ok = (r->ok = take_word(&c, "true")) || take_word(&c, "false");
            else if (strcmp(key, "cmd") == 0) {
                char command[16];
                ok = parse_string(&c, command, sizeof command);
                r->other_command = strcmp(command, "region") != 0;
            } else if (strcmp(key, "error") == 0) ok = parse_string(&c, error, error_capacity);
            else if (strcmp(key, "size") == 0) ok = r->has_size = integer_value(&c, &r->size);
            else if (strcmp(key, "lanes") == 0) ok = integer_value(&c, &number), r->lanes = (int64_t)number;
            else if (strcmp(key, "slot_size") == 0) ok = integer_value(&c, &number), r->slot_size = (int64_t)number;
            else ok = skip_value(&c, 0);  // "guest", and keys we do not know
            if (!ok) return false;
        } while (take(&c, ','));
        if (!take(&c, '}')) return false;
    }
    skip_space(&c);
    return c.at == c.end;
}

// MARK: - Handshake

int dx_handshake(const char *path, int lanes, uid_t host_uid, uint64_t timeout_ns, dx_grant *grant, char *refusal,
                 size_t refusal_capacity) {
    uint64_t deadline = now_ns() + timeout_ns;
    *grant = (dx_grant){.conn = -1, .region = -1, .lanes = -1, .slot_size = -1};
    if (refusal_capacity) refusal[0] = 0;
    int conn = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn < 0) return DX_E_SYSTEM;
    int fd = -1;
    char *line = NULL;
    // 1. Connect, and check the peer. SO_SNDTIMEO bounds the connect and the send.
    struct timeval bound = {.tv_sec = (time_t)(timeout_ns / 1000000000u), .tv_usec = (long)(timeout_ns % 1000000000u / 1000)};
    int rc = setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound) == 0 ? DX_OK : DX_E_SYSTEM;
    if (rc == DX_OK) rc = connect_to(conn, path);
    if (rc == DX_OK) {
        struct ucred peer;
        socklen_t size = sizeof peer;
        if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0) rc = DX_E_SYSTEM;
        else if (peer.uid != host_uid) rc = DX_E_WRONG_OWNER;
    }
    // 2. Ask for a region.
    if (rc == DX_OK) {
        char request[64];
        int length = lanes > 0 ? snprintf(request, sizeof request, "{\"v\":1,\"cmd\":\"region\",\"lanes\":%d}\n", lanes)
                               : snprintf(request, sizeof request, "{\"v\":1,\"cmd\":\"region\"}\n");
        rc = send_line(conn, request, (size_t)length);
    }
    // 3. The reply, and the descriptor that travels with its first bytes.
    size_t length = 0;
    if (rc == DX_OK) rc = (line = malloc(MAX_LINE + 1)) ? DX_OK : DX_E_SYSTEM;
    if (rc == DX_OK) rc = read_reply(conn, line, &length, &fd, deadline);
    reply r;
    if (rc == DX_OK) {
        bool understood = parse_reply(line, length, &r, refusal, refusal_capacity);
        if (!understood || !r.has_version || r.version != 1 || !r.has_ok || r.other_command) rc = DX_E_PROTOCOL;
        else if (!r.ok) rc = DX_E_REFUSED;
        else if (fd < 0 || !r.has_size) rc = DX_E_PROTOCOL;  // a grant comes with the region and its size
    }
    if (rc != DX_E_REFUSED && refusal_capacity) refusal[0] = 0;
    free(line);
    if (rc != DX_OK) {
        if (fd >= 0) close_keeping_errno(fd);
        close_keeping_errno(conn);
        return rc;
    }
    *grant = (dx_grant){.conn = conn, .region = fd, .size = r.size, .lanes = r.lanes, .slot_size = r.slot_size};
    return DX_OK;
}
