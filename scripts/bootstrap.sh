#!/usr/bin/env bash
# Make `uv` available and the project's .venv match uv.lock. Idempotent.
#
# Source it from another bash script (`source scripts/bootstrap.sh`) so that a freshly
# installed uv stays on that script's PATH; running it directly works too.

_bootstrap_uv_works() {
    # `command -v` alone is not enough: a pyenv shim exists even when uv does not.
    command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1
}

_bootstrap_install_uv() {
    local py=$1 out
    echo "bootstrap: uv not found; installing it with pip" >&2
    # Plain --user first; Debian's own python3 refuses that (PEP 668) without
    # --break-system-packages; inside a virtualenv --user is refused, so last try without.
    if out=$("$py" -m pip install --quiet --disable-pip-version-check --user uv 2>&1) ||
        out=$("$py" -m pip install --quiet --disable-pip-version-check --user \
            --break-system-packages uv 2>&1) ||
        out=$("$py" -m pip install --quiet --disable-pip-version-check uv 2>&1); then
        return 0
    fi
    printf '%s\n' "$out" >&2
    echo "bootstrap: error: could not install uv with pip" >&2
    return 1
}

_bootstrap() {
    local root py user_bin uv_bin
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

    if ! _bootstrap_uv_works; then
        py=$(command -v python3 || command -v python) || {
            echo "bootstrap: error: neither uv nor python3 is on PATH" >&2
            return 1
        }
        # pip --user installs into ~/.local/bin, which a fresh machine's PATH often lacks
        # (and which may already hold uv from an earlier run).
        user_bin="$("$py" -m site --user-base)/bin"
        if [[ -x $user_bin/uv ]]; then
            uv_bin=$user_bin/uv
        else
            _bootstrap_install_uv "$py" || return 1
            uv_bin=$("$py" -c 'import uv; print(uv.find_uv_bin())') || return 1
        fi
        PATH="$(dirname "$uv_bin"):$PATH"
        export PATH
        hash -r
        _bootstrap_uv_works || {
            echo "bootstrap: error: uv at $uv_bin does not run" >&2
            return 1
        }
    fi
    echo "bootstrap: uv $(uv --version | cut -d' ' -f2) at $(command -v uv)"

    # Never let uv fetch a Python build: this project uses the machine's python3 (>= 3.11),
    # and a download would fail on machines that only reach package registries.
    (cd "$root" && UV_PYTHON_DOWNLOADS=${UV_PYTHON_DOWNLOADS:-never} uv sync --locked --quiet) || {
        echo "bootstrap: error: uv sync --locked failed" >&2
        return 1
    }
}

# Strict mode only when run directly: a sourcing script keeps its own shell options.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then set -euo pipefail; fi
_bootstrap
