#!/bin/sh
# deps.sh - install the Debian 12 packages strictmx needs (idempotent).
#   scripts/deps.sh build   build dependencies only (make run)
#   scripts/deps.sh test    build + test dependencies and test peers (make test)
set -eu
what=${1:-build}

BUILD_PKGS="build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
 libssl-dev libevent-dev libunbound-dev libsqlite3-dev libinih-dev libjansson-dev
 libcurl4-openssl-dev libcrypt-dev openssl ca-certificates dns-root-data"
TEST_PKGS="libcmocka-dev swaks libnet-ssleay-perl libio-socket-ssl-perl postfix testssl.sh python3 nsd ldnsutils unbound
 nginx faketime dovecot-core dovecot-lmtpd bind9-dnsutils bsdextrautils sqlite3 procps iproute2 cppcheck clang-format clang-tidy valgrind curl
 chromium python3-fusepy fuse"

pkgs=$BUILD_PKGS
[ "$what" = test ] && pkgs="$pkgs $TEST_PKGS"

missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi
# Postfix is a test peer only: keep the package from configuring a system MTA.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
# The packaged services must not run system-wide: tests start their own instances.
for s in postfix nsd unbound nginx dovecot; do
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now "$s" >/dev/null 2>&1 || true
	fi
	service "$s" stop >/dev/null 2>&1 || true
done
exit 0
