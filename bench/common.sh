# Shared by the benchmark scripts: tools, a scratch dir, process cleanup.
# Source it after `set -euo pipefail` and `cd` to the repository root.

# Installs Debian packages providing the given commands' tools if any is missing.
ensure_tools() { # ensure_tools "redis-server redis-benchmark" "redis-server redis-tools"
    local missing=0 c
    for c in $1; do command -v "$c" >/dev/null || missing=1; done
    if [ "$missing" = 1 ]; then
        echo "installing $2 from Debian..."
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 >/dev/null
    fi
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_ready() { # wait_ready PORT
    for _ in $(seq 1 100); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

# run_bench PORT PIPELINE TESTS -> lines "TEST rps": redis-benchmark on CPU 1, -c 50,
# -n $N over 100000 random keys.
run_bench() {
    taskset -c 1 redis-benchmark -p "$1" -c 50 -P "$2" -n "$N" -r 100000 -t "$3" --csv 2>/dev/null \
        | awk -F'","' 'NR>1 {gsub(/"/,"",$1); gsub(/"/,"",$2); print $1, $2}'
}

# wait_linked PORT: until the node's first peer link is up (a load begun
# before it would have trimmed the backlog's first writes, and the peer would
# join by a state transfer).
wait_linked() {
    for _ in $(seq 1 100); do
        redis-cli -p "$1" INFO replication | grep -q "^peer0:.*state=connected" && return 0
        sleep 0.1
    done
    echo "node on port $1 did not link to its peer" >&2
    exit 1
}

# A client port whose replication port (+10000) is free as well.
free_repl_port() {
    python3 - <<'PY'
import socket, random
while True:
    p = random.randint(20000, 29000)
    try:
        t = socket.socket(); t.bind(("127.0.0.1", p)); t.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", p + 10000)); u.close()
        print(p); break
    except OSError:
        pass
PY
}

# start_pair BINARY: two nodes peered both ways, password "bench", one server thread each, A on
# CPU 0 and B on CPU 1; sets pa, pb (ports) and a, b (pids) once both answer PING.
start_pair() {
    pa=$(free_repl_port)
    pb=$(free_repl_port)
    taskset -c 0 "$1" server --port "$pa" --server-threads 1 --requirepass bench \
        --masterauth bench --replicaof 127.0.0.1 "$pb" >/dev/null 2>&1 &
    a=$!
    PIDS+=($a)
    taskset -c 1 "$1" server --port "$pb" --server-threads 1 --requirepass bench \
        --masterauth bench --replicaof 127.0.0.1 "$pa" >/dev/null 2>&1 &
    b=$!
    PIDS+=($b)
    local port
    for port in "$pa" "$pb"; do
        for _ in $(seq 1 100); do
            redis-cli -a bench --no-auth-warning -p "$port" PING >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Stops a server and waits until it is gone: servers start in subshells, so `wait` cannot
# see them, and one still exiting (a final cut to disk) would steal the next run's CPU.
stop() { # stop PID
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}

# median_of SERVER TEST: the median of the third field of $RESULTS's lines "SERVER TEST value".
median_of() { awk -v s="$1" -v t="$2" '$1==s && $2==t {print $3}' "$RESULTS" | median; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

machine() {
    echo "machine: $(nproc) vCPU $(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}'), $(free -g | awk '/Mem/ {print $2}') GiB; $(date -u +%F)"
}

# start CPU PORT [extra args...]: starts a chorus node (release build, one server
# thread) pinned to CPU, sets STARTED to its pid. (Not run in $(...): a subshell
# would hold the pipe open and run the EXIT trap.)
start() {
    local cpu=$1 port=$2; shift 2
    taskset -c "$cpu" ./target/release/chorus server --port "$port" --server-threads 1 "$@" \
        >/dev/null 2>>"$WORK/chorus.log" &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready "$port"
}

now_ms() { date +%s%3N; }

# cpu_s PID: the CPU seconds PID's threads have run, to the nanosecond (their schedstat run
# times; /proc/PID/stat counts 10 ms ticks, 1.5% of a round of a million writes here). A
# thread that ended takes its time with it: the servers' threads live as long as they do.
cpu_s() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.6f\n", s / 1e9}'; }

# peer_field PORT NAME: a counter of the first peer line of PORT's INFO replication.
peer_field() {
    redis-cli -p "$1" INFO replication | tr ',' '\n' | tr -d '\r' | awk -F= -v n="$2" '$1 == n {print $2+0; exit}'
}

# start_redis / start_chorus [CPUS [THREADS]]: print "PID PORT" of a server pinned to CPU 0
# (chorus: CPUS, default 0, with THREADS server threads, default 1) on a free port. Run as
# `read -r pid port < <(start_redis)`.
start_redis() {
    local port; port=$(free_port)
    taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --logfile "$WORK/redis.log" &
    PIDS+=($!); echo "$! $port"
}

# start_server redis|chorus: start_redis or start_chorus (one server thread on CPU 0).
start_server() {
    case $1 in
        redis) start_redis ;;
        chorus) start_chorus ;;
    esac
}

start_chorus() {
    local port; port=$(free_port)
    taskset -c "${1:-0}" ./target/release/chorus server --port "$port" --server-threads "${2:-1}" \
        2>>"$WORK/chorus.log" &
    PIDS+=($!); echo "$! $port"
}

# small_hashes_resp FILE: RESP for 100,000 HSETs of hashes user:<12 digits> (redis-benchmark's
# __rand_int__ is 12 digits) with 10 fields field0..field9 of 16-byte values.
small_hashes_resp() {
    python3 - "$1" <<'PY'
import sys
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
with open(sys.argv[1], "wb") as f:
    for i in range(100000):
        args = [b"HSET", b"user:%012d" % i]
        for j in range(10):
            args += [b"field%d" % j, b"v" * 16]
        f.write(cmd(*args))
PY
}
