#!/usr/bin/env bash
# Java 17 for the Spark backend of identity resolution (pyspark 4 runs on Java 17+): installs the
# headless JRE from Debian when no `java` is on PATH, and does nothing when one is.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "Java 17 is missing and this is not root: install openjdk-17-jre-headless, or set identity.backend: duckdb." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
java -version
