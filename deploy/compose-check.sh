#!/usr/bin/env bash
# Check a compose file the way `docker compose config` does, on machines without Docker's
# compose plugin: with compose-go, the library that plugin loads and validates files with
# (the Compose Specification's schema, interpolation, consistency checks). Prints the
# resolved file; exits non-zero on an invalid one.
#
#   deploy/compose-check.sh [FILE]        default: deploy/compose.yaml
#
# The first run builds compose-go's checker with the Go toolchain (from the Go module
# proxy) into a cache. Environment: COMPOSE_GO_VERSION (v2.16.2), LOYALTY_COMPOSE_CACHE
# (~/.cache/loyalty/compose-go).
set -euo pipefail

VERSION=${COMPOSE_GO_VERSION:-v2.16.2}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FILE=$(realpath -- "${1:-$HERE/compose.yaml}")
CACHE=${LOYALTY_COMPOSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loyalty/compose-go}/$VERSION

log() { printf 'compose-check: %s\n' "$*" >&2; }

if docker compose version >/dev/null 2>&1; then
    exec docker compose -f "$FILE" config
fi

if [[ ! -x $CACHE/cmd ]]; then
    if ! command -v go >/dev/null 2>&1; then
        [[ $EUID -eq 0 ]] || { log "needs Go (apt-get install golang-go) or Docker's compose plugin"; exit 2; }
        log "installing Go (apt-get install golang-go)..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go; } >&2
    fi
    log "building compose-go $VERSION's checker into $CACHE"
    mkdir -p "$CACHE"
    # GOTOOLCHAIN=auto fetches a newer Go from the proxy if the installed one is too old.
    GOTOOLCHAIN=auto GOFLAGS=-mod=mod GOBIN="$CACHE" \
        go install "github.com/compose-spec/compose-go/v2/cmd@$VERSION" >&2
fi

cd "$(dirname "$FILE")"  # relative paths in the file resolve from its folder
exec "$CACHE/cmd" "$FILE"
