#!/usr/bin/env bash
# Scans a teeproxy TLS listener with testssl.sh (Debian package `testssl.sh`; run by
# .ci/run; runs from any directory). It makes a CA and a server certificate with openssl
# (EC P-256, 90 days, for localhost and 127.0.0.1), starts teeproxy on loopback with one
# TLS listener on port 0 (its address is read from the `listening` log line), runs
# testssl offline (no DNS lookups, the one address, warnings off, the CA added as trusted,
# JSON findings) on protocols, cipher categories, forward secrecy, server defaults and
# preferences, and vulnerabilities, and fails when:
#   - SSLv2, SSLv3, TLS 1.0 or TLS 1.1 is offered, or TLS 1.2 or 1.3 is not;
#   - NULL, anonymous, export, LOW, 3DES/IDEA or CBC ("AVERAGE") suites are offered;
#   - any finding has a severity above LOW (MEDIUM, HIGH, CRITICAL), except findings about
#     the test certificate itself (`cert_*`: no CRL or OCSP URL in a throwaway cert says
#     nothing of the listener), which are listed.
# teeproxy is built with cargo unless TEEPROXY_BIN names a binary. Only the teeproxy
# process this script started is stopped, by its PID. Bounded: testssl gets
# TLS_CHECK_TIMEOUT seconds (default 900).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "deploy/tls-check.sh: FAILED: $*" >&2
  exit 1
}
step() { echo "== tls-check: $*"; }

testssl=$(command -v testssl || command -v testssl.sh || true)
[ -n "$testssl" ] || fail "testssl not found (apt-get install testssl.sh)"
command -v openssl >/dev/null 2>&1 || fail "openssl not found"
command -v python3 >/dev/null 2>&1 || fail "python3 not found"

if [ -n "${TEEPROXY_BIN:-}" ]; then
  teeproxy=$TEEPROXY_BIN
else
  step "cargo build -p teeproxy"
  cargo build --quiet --locked -p teeproxy || fail "cargo build -p teeproxy"
  teeproxy="${CARGO_TARGET_DIR:-target}/debug/teeproxy"
fi
[ -x "$teeproxy" ] || fail "no teeproxy binary at $teeproxy"

work=target/tls-check
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)

step "certificates (openssl): a CA and a server certificate for localhost"
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 90 \
  -subj "/CN=teeproxy tls-check CA" -keyout "$work/ca.key" -out "$work/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null || fail "openssl: CA"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -subj "/CN=localhost" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null ||
  fail "openssl: server key"
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$work/server.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -days 90 -extfile "$work/server.ext" -out "$work/server.crt" 2>/dev/null ||
  fail "openssl: server certificate"

cat >"$work/tee.yaml" <<YAML
listeners:
  - name: tls
    address: "127.0.0.1:0"
    tls: { cert: "$work/server.crt", key: "$work/server.key", handshake_timeout: 10s }
admin: { address: "127.0.0.1:0" }
clusters:
  app: { endpoints: ["http://127.0.0.1:9"] }
routes: [{ name: all, primary: app }]
YAML
"$teeproxy" check --config "$work/tee.yaml" || fail "teeproxy check"

step "teeproxy on loopback"
"$teeproxy" --config "$work/tee.yaml" --log-format json --no-watch 2>"$work/teeproxy.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 1 200); do
  addr=$(grep -o '"listener":"tls","addr":"[^"]*"\|"addr":"[^"]*","listener":"tls"' "$work/teeproxy.log" 2>/dev/null |
    grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || fail "teeproxy exited: $(cat "$work/teeproxy.log")"
  sleep 0.05
done
[ -n "$addr" ] || fail "teeproxy did not log its TLS listener's address"
port=${addr##*:}
echo "listening on $addr"

step "testssl $("$testssl" --version 2>/dev/null | grep -o 'testssl *[0-9][^ ]*' | head -1) against localhost:$port"
set +e
timeout "${TLS_CHECK_TIMEOUT:-900}" "$testssl" --quiet --color 0 --warnings off --nodns none \
  --ip 127.0.0.1 --add-ca "$work/ca.crt" --connect-timeout 5 --openssl-timeout 5 \
  --protocols --std --fs --server-defaults --server-preference --vulnerable \
  --jsonfile "$work/testssl.json" "https://localhost:$port" >"$work/testssl.txt" 2>&1
status=$?
set -e
[ "$status" -ne 124 ] || fail "testssl did not finish within ${TLS_CHECK_TIMEOUT:-900} s"
[ -s "$work/testssl.json" ] || fail "testssl wrote no findings (exit $status): $(tail -20 "$work/testssl.txt")"

python3 - "$work/testssl.json" <<'PY' || fail "testssl findings (full report: $work/testssl.txt)"
import json, sys
findings = json.load(open(sys.argv[1]))
by_id = {}
for f in findings:
    by_id.setdefault(f["id"], []).append(f)
problems = []
def finding(id_):
    return " / ".join(f["finding"] for f in by_id.get(id_, [])) or "(missing)"
for proto in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
    if "not offered" not in finding(proto):
        problems.append(f"{proto}: {finding(proto)}")
for proto in ["TLS1_2", "TLS1_3"]:
    f = finding(proto)
    if "not offered" in f or "offered" not in f:
        problems.append(f"{proto} should be offered: {f}")
for cat in ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
            "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"]:
    if "not offered" not in finding(cat):
        problems.append(f"{cat}: {finding(cat)}")
above = {"MEDIUM", "HIGH", "CRITICAL"}
listed = []
for f in findings:
    if f.get("severity") in above:
        line = f"{f['severity']:<8} {f['id']}: {f['finding']}"
        (listed if f["id"].startswith("cert_") else problems).append(line)
counts = {}
for f in findings:
    counts[f.get("severity")] = counts.get(f.get("severity"), 0) + 1
protos = ", ".join(f"{p} {finding(p)}" for p in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"])
print(f"protocols: {protos}")
print("cipher categories: " + ", ".join(f"{c.split('_', 1)[1]} {finding(c)}" for c in
      ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
       "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_STRONG"]))
vulns = [f for f in findings if f["id"] in ("heartbleed", "CCS", "ticketbleed", "ROBOT",
         "secure_renego", "secure_client_renego", "CRIME_TLS", "BREACH", "POODLE_SSL",
         "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4")]
print("vulnerabilities: " + "; ".join(f"{f['id']} {f['severity']} ({f['finding']})" for f in vulns))
print("findings by severity: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
for l in listed:
    print(f"about the test certificate (not failing): {l}")
if problems:
    print("problems:")
    for p in problems:
        print(f"  {p}")
    sys.exit(1)
print("tls-check: ok")
PY
