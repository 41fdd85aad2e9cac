# Shared by scripts/bench, scripts/test and .ci/run. Source it; it changes nothing by itself.

# Puts the Swift toolchain on PATH when it is installed in /opt/swift but not found.
dx_find_swift() {
    if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null 2>&1 || { echo "error: swift is not installed (expected /opt/swift)" >&2; return 1; }
}

# Installs the Debian packages dx needs (and any named as arguments) when they are missing:
# with apt-get when running as root, otherwise it names them and fails.
dx_ensure_packages() {
    local missing=()
    local package
    for package in liburing-dev libc6-dev "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing ${missing[*]} ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "error: missing system packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
}
