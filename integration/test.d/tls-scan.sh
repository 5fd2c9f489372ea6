#!/usr/bin/env bash
# TLS profile check: sslyze scans a TLS listener with the default settings and with
# min_version = "1.3"; fails if anything below TLS 1.2 (resp. 1.3) or a non-ECDHE /
# non-AEAD suite is accepted. ~10 s per scan plus `pip install sslyze` on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
integration/tls-scan
integration/tls-scan --min-version 1.3
