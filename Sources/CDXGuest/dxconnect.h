// The C guest's handshake with a private host (not public API): "Private regions (`dx-host
// --private`)" in docs/LAYOUT.md, steps 1-3 — the socket, the peer's uid, the request line, and the
// reply line with its descriptor. dxguest.c checks and maps the descriptor (step 4) with the code
// that attaches to a named region. Include it after defining _GNU_SOURCE, as dxguest.c and
// dxconnect.c do.
#ifndef DXCONNECT_H
#define DXCONNECT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dxwait.h"  // DX_INTERNAL

/// What a host that granted a region handed over.
typedef struct {
    int conn;    ///< the connection: the region's life (closing it frees the region)
    int region;  ///< the region's descriptor, not yet checked
    uint64_t size;              ///< "size" of the reply
    int64_t lanes, slot_size;   ///< "lanes" and "slot_size" of the reply, -1 when absent
} dx_grant;

/// The socket a private host of `name` listens on by default: `$XDG_RUNTIME_DIR/dx/<name>.sock`,
/// else `/tmp/dx-<uid>/<name>.sock` (this process's uid). Returns false when it does not fit.
DX_INTERNAL bool dx_default_socket_path(const char *name, char *path, size_t capacity);

/// Connects to the host at `path`, checks that its peer runs as `host_uid` (SO_PEERCRED), asks for
/// a region of `lanes` lanes (0: the host's default) and reads the reply, all within `timeout_ns`.
/// DX_OK with *grant filled (both descriptors the caller's); DX_E_REFUSED with the host's sentence
/// in `refusal`; or another dx_error, with nothing left open.
DX_INTERNAL int dx_handshake(const char *path, int lanes, uid_t host_uid, uint64_t timeout_ns, dx_grant *grant,
                             char *refusal, size_t refusal_capacity);

#endif
