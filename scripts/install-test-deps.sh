#!/usr/bin/env bash
# Debian packages the test suite needs. Idempotent: installs only what is missing.
set -euo pipefail
need=()
# prometheus: tests/test_prometheus.py evaluates the Flagger and Argo Rollouts templates'
# queries (config/*-template.yaml) on a real Prometheus server scraping the proxy.
[ -x /usr/bin/prometheus ] || need+=(prometheus)
# chromium: tests/test_ui.py loads the report viewer (/ui/) in a real headless browser,
# driven by playwright pointed at this binary (playwright's own browser download cannot run here).
[ -x /usr/bin/chromium ] || need+=(chromium)
# gcc: `make test` also builds and tests the mypyc-compiled data plane and the C JSON walk
# of the shadow diff (setup.py, native/); tests/test_jsondiff_native.py fails without it.
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)  # a developer's own machine: apt needs root
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
