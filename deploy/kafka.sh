#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker+controller) on loopback, no Docker.
#
#   deploy/kafka.sh fetch                      download Kafka's jars once (Maven Central, cached)
#   deploy/kafka.sh start DATA_DIR [PORT [CONTROLLER_PORT]]
#                                              format storage if new, start, wait until ready,
#                                              print `export KAFKA_BOOTSTRAP_SERVERS=...`;
#                                              default ports: free ones below the ephemeral
#                                              range (net.ipv4.ip_local_port_range)
#   deploy/kafka.sh stop DATA_DIR              stop it (safe when not running)
#   deploy/kafka.sh status DATA_DIR            exit 0 when running, 3 when not
#   deploy/kafka.sh env DATA_DIR               print the export line of a running broker
#
# Environment: KAFKA_VERSION (3.9.2), LOYALTY_KAFKA_CACHE (~/.cache/loyalty/kafka),
# KAFKA_HEAP_OPTS (-Xms256m -Xmx1g). Progress goes to stderr so stdout can be eval'd.
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-3.9.2}
CACHE=${LOYALTY_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loyalty/kafka}
LIB="$CACHE/$KAFKA_VERSION/lib"
HEAP=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# Install a missing tool from Debian's packages (as root), or say how to.
need() {
    local tool=$1 package=$2
    command -v "$tool" >/dev/null && return 0
    [[ $(id -u) -eq 0 ]] || die "$tool is needed: apt-get install -y $package"
    say "installing $package for $tool"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; } >&2
    then
        die "could not install $package"
    fi
}

# A free port below Linux's ephemeral range (ports the kernel hands out to outgoing
# connections). A broker port inside that range can be taken by a client's connection to
# itself (a TCP self-connect: a retrying client connects from the port it dials), and then
# the broker cannot restart on it ("Address already in use").
free_port() {
    python3 - <<'PY'
import random, socket
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except OSError:
    low = 32768
for _ in range(200):
    port = random.randrange(10000, max(low, 10001))
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
else:
    raise SystemExit("no free port below the ephemeral range")
PY
}

fetch() {
    if [[ -f "$LIB/kafka_2.13-$KAFKA_VERSION.jar" && -f "$LIB/.complete" ]]; then
        return 0
    fi
    need java openjdk-17-jre-headless
    need mvn maven
    say "fetching Kafka $KAFKA_VERSION jars into $LIB (once)"
    local work
    work=$(mktemp -d)
    # A throwaway pom whose runtime classpath is the broker, plus a logging backend.
    cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.loyalty</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>1.2.25</version></dependency>
  </dependencies>
</project>
EOF
    rm -rf "$LIB"
    mkdir -p "$LIB"
    (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$LIB" >&2) || die "maven could not fetch the Kafka jars"
    rm -rf "$work"
    touch "$LIB/.complete"
}

is_running() {
    local dir=$1
    [[ -f "$dir/kafka.pid" ]] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null
}

print_env() {
    echo "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(cat "$1/port")"
}

start() {
    local dir=${1:?usage: kafka.sh start DATA_DIR [PORT [CONTROLLER_PORT]]}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if is_running "$dir"; then
        say "already running in $dir"
        print_env "$dir"
        return 0
    fi
    fetch
    # A restart in the same folder keeps its ports, so clients find the broker again.
    local port=${2:-$(cat "$dir/port" 2>/dev/null || free_port)}
    local cport=${3:-$(cat "$dir/cport" 2>/dev/null || free_port)}
    echo "$port" >"$dir/port"
    echo "$cport" >"$dir/cport"
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
    cat >"$dir/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$dir/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka=INFO
EOF
    local java_opts=(-cp "$LIB/*" "-Dlog4j.configuration=file:$dir/log4j.properties")
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        local cluster_id
        cluster_id=$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
        java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
            -c "$dir/server.properties" >&2 || die "formatting storage failed"
    fi
    : >"$dir/server.log"
    # shellcheck disable=SC2086 # HEAP holds several options on purpose
    nohup java $HEAP "${java_opts[@]}" kafka.Kafka "$dir/server.properties" \
        >"$dir/stdout.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
    local waited=0
    until grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; do
        if ! is_running "$dir"; then
            tail -20 "$dir/server.log" "$dir/stdout.log" >&2 || true
            die "the broker exited during start-up (logs in $dir)"
        fi
        if ((waited >= 120)); then
            die "the broker did not start within 60 s (logs in $dir)"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    say "broker ready on 127.0.0.1:$port (data in $dir)"
    print_env "$dir"
}

stop() {
    local dir=${1:?usage: kafka.sh stop DATA_DIR}
    is_running "$dir" || { rm -f "$dir/kafka.pid"; return 0; }
    local pid
    pid=$(cat "$dir/kafka.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$dir/kafka.pid"; return 0; }
        sleep 0.5
    done
    say "broker did not stop in 30 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/kafka.pid"
}

case ${1:-} in
fetch) fetch ;;
start) shift; start "$@" ;;
stop) shift; stop "$@" ;;
status) shift; is_running "${1:?usage: kafka.sh status DATA_DIR}" || exit 3 ;;
env) shift; is_running "${1:?}" || die "no broker running in $1"; print_env "$1" ;;
*) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
