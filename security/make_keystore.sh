#!/usr/bin/env bash
# Build an SROS2 keystore (DDS Security: authentication, encryption, access
# control) with one enclave per <enclave> of security/policy.xml, each with
# a certificate and the permissions its grant in the policy lists.
#
#   security/make_keystore.sh KEYSTORE [POLICY]
#       create KEYSTORE if missing (a new CA), then (re)create every enclave
#       of POLICY (default: security/policy.xml beside this script). Existing
#       enclave keys are kept; permissions are rewritten from the policy.
#   security/make_keystore.sh --export KEYSTORE ENCLAVE DEST
#       copy the files ONE host needs (DEST/enclaves/<ENCLAVE>/, symlinks
#       resolved, no CA keys) to give that host: e.g. /flowpilot to the
#       robot, /learner to the learner host. Point that host's
#       ROS_SECURITY_KEYSTORE at DEST.
#
# ROS_DOMAIN_ID (default 0) is written into the governance and permission
# files: build the keystore with the robot's domain set.
#
# Needs sros2: `ros2 security` from a system ROS 2 (apt: ros-jazzy-sros2), or
# the sros2 Python package importable by python3. The embedded ROS 2 of
# scripts/setup-ros.sh (PyPI wheels) has no sros2, and its Fast DDS is built
# without DDS Security, so a keystore would not help there:
# docs/security.md says what that leaves open.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "make_keystore.sh: $*" >&2; exit 2; }

if [ "${1:-}" = "--export" ]; then
  [ $# -eq 4 ] || die "usage: $0 --export KEYSTORE ENCLAVE DEST"
  ks=$2; enclave=/${3#/}; dest=$4
  src="$ks/enclaves$enclave"
  [ -f "$src/key.pem" ] || die "no enclave $enclave in $ks"
  mkdir -p "$dest/enclaves$enclave"
  chmod 700 "$dest"
  for f in cert.pem key.pem identity_ca.cert.pem permissions_ca.cert.pem governance.p7s permissions.p7s permissions.xml; do
    cp -L "$src/$f" "$dest/enclaves$enclave/$f"
  done
  chmod 600 "$dest/enclaves$enclave/key.pem"
  echo "exported $enclave to $dest (set ROS_SECURITY_KEYSTORE=$dest on that host)"
  exit 0
fi

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 KEYSTORE [POLICY]  |  $0 --export KEYSTORE ENCLAVE DEST"
ks=$1
policy=${2:-$here/policy.xml}
[ -f "$policy" ] || die "no policy file $policy"
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-0}

if command -v ros2 >/dev/null 2>&1 && ros2 security --help >/dev/null 2>&1; then
  ros2 security generate_artifacts -k "$ks" -p "$policy"
elif python3 -c 'import sros2.api._artifact_generation' >/dev/null 2>&1; then
  python3 - "$ks" "$policy" <<'PY'
import pathlib, sys
from sros2.api._artifact_generation import generate_artifacts
generate_artifacts(pathlib.Path(sys.argv[1]), [], [pathlib.Path(sys.argv[2])])
PY
else
  die "sros2 not found (neither 'ros2 security' nor the sros2 Python package).
  With a system ROS 2: apt install ros-jazzy-sros2 and source /opt/ros/jazzy/setup.bash.
  The embedded PyPI ROS 2 has no sros2 and no DDS Security (docs/security.md)."
fi

# Keys stay with their owner.
chmod 700 "$ks/private"
find "$ks/enclaves" -name key.pem -exec chmod 600 {} +

# An enclave made by a bare `ros2 security create_enclave` gets a wildcard
# grant (publish, subscribe, call and serve everything): refuse a keystore
# that holds one, it would defeat the policy.
wild=$(grep -rlE '<topic>r[tqr]/\*' --include=permissions.xml "$ks/enclaves" || true)
if [ -n "$wild" ]; then
  echo "make_keystore.sh: these enclaves carry an allow-everything grant (not from $policy):" >&2
  echo "$wild" | sed "s#^$ks/enclaves#  #; s#/permissions.xml\$##" >&2
  echo "remove them (rm -r KEYSTORE/enclaves/<name>) or add them to the policy" >&2
  exit 1
fi

echo "keystore $ks (ROS_DOMAIN_ID=$ROS_DOMAIN_ID), enclaves from $policy:"
python3 - "$policy" <<'PY'
import sys, xml.etree.ElementTree as ET
for e in ET.parse(sys.argv[1]).getroot().iter("enclave"):
    print("  " + e.get("path"))
PY
echo "run each process with ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce"
echo "ROS_SECURITY_KEYSTORE=<keystore> and --ros-args --enclave <path> (docs/security.md)"
