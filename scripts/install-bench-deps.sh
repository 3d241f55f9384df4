#!/usr/bin/env bash
# Install what `make bench` needs from Debian: nginx (upstream and reference proxy) and wrk
# (load generator); and g++ for bench/parsers.py (it builds simdjson, which is C++, to time
# it against the C walk's yyjson). Idempotent: does nothing when all are already installed.
#
# bench/run.py starts its own nginx instances with generated configs on free loopback
# ports; the system nginx service is never wanted. Debian's nginx postinst would start
# it (listening on :80), so package scripts are kept from starting services while we
# install (policy-rc.d exit 101, see /usr/share/doc/init-system-helpers/README.policy-rc.d),
# and a system nginx that runs anyway is stopped afterwards.
set -euo pipefail

packages=(nginx wrk g++)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-bench-deps: ${packages[*]} already installed"
else
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    else
        sudo=(sudo)
    fi

    # Keep invoke-rc.d from starting nginx during install. Only a policy-rc.d we created
    # is removed again; an existing one (as in containers) is left alone.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from splitproxy scripts/install-bench-deps.sh\nexit 101\n' \
            | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    cleanup() {
        if ((created_policy)); then
            "${sudo[@]}" rm -f "$policy"
        fi
    }
    trap cleanup EXIT

    echo "install-bench-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# If a system nginx is running anyway (installed earlier, or a policy-rc.d that allowed
# it), stop it: it holds :80 and would only add noise to measurements. Our own bench
# nginx instances use their own pid files in a temp dir, so they are never matched here.
if command -v nginx >/dev/null 2>&1 && [[ -s /run/nginx.pid ]] \
    && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    echo "install-bench-deps: stopping the system nginx service (pid $(cat /run/nginx.pid))"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl stop nginx || true
        systemctl disable nginx >/dev/null 2>&1 || true
    else
        nginx -s quit || true
    fi
fi

nginx -v
wrk --version 2>&1 | head -n 1 || true  # wrk prints its usage and exits 1 on --version
