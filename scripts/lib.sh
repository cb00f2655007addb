# Shared shell helpers for scripts/demo and scripts/bench*. Source it; it defines functions only.

# free_port: prints a free TCP port on 127.0.0.1.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# start_registry DIR: runs Debian's docker-registry on 127.0.0.1 with storage in DIR.
# Sets REG_ADDR and REG_PID; the caller stops it with `kill $REG_PID`.
start_registry() {
    local dir=$1 port
    mkdir -p "$dir/data"
    port=$(free_port)
    cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YAML
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REG_PID=$!
    REG_ADDR=127.0.0.1:$port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "docker-registry did not start; its log:" >&2
    cat "$dir/registry.log" >&2
    return 1
}

# build_release: builds pinbundle and the fixture pusher in release mode; sets PB and FIX.
build_release() {
    cargo build --release --quiet -p pinbundle -p pinbundle-fixtures
    PB=${CARGO_TARGET_DIR:-$PWD/target}/release/pinbundle
    FIX=${CARGO_TARGET_DIR:-$PWD/target}/release/pinbundle-fixtures
}

# seconds CMD...: runs CMD, prints its wall time in seconds to stdout (CMD's stdout is dropped).
seconds() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

# peak_kib CMD...: runs CMD, prints its peak resident memory in KiB.
peak_kib() {
    /usr/bin/time -f '%M' -o /tmp/pinbundle-peak.$$ "$@" >/dev/null 2>&1
    cat /tmp/pinbundle-peak.$$
    rm -f /tmp/pinbundle-peak.$$
}

# ratio A B: A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# zig_tools: puts cargo-zigbuild and zig (PyPI) on PATH, installed on first use into a
# virtualenv under ~/.cache/pinbundle-zig (PINBUNDLE_ZIG_VENV to move it). scripts/release
# and scripts/test build the node binary against glibc 2.28 with them.
zig_tools() {
    local venv=${PINBUNDLE_ZIG_VENV:-$HOME/.cache/pinbundle-zig}
    if [[ ! -x "$venv/bin/cargo-zigbuild" ]] || ! "$venv/bin/python" -m ziglang version >/dev/null 2>&1; then
        echo "== installing cargo-zigbuild and ziglang (PyPI) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --upgrade cargo-zigbuild ziglang
    fi
    export PATH="$venv/bin:$PATH"
    echo "== cargo-zigbuild $(cargo-zigbuild --version | awk '{print $2}'), zig $(python -m ziglang version)"
}
