#!/usr/bin/env bash
# Peak memory and time of one large transaction Bundle posted to `passerelle serve`.
#
#   benches/bundle-memory.sh [ENTRIES…]        (default: 1000 10000 40000)
#
# For each size: a fresh database on the PostgreSQL of DATABASE_URL (default the
# local one on 127.0.0.1:5432) and, for each Bundle, a fresh release server; four
# Bundles of that many Patients (INS, name, address) posted with curl: PUT at new
# ids, POST with urn:uuid fullUrls, PUT again (updates), DELETE. Prints the body
# size, the time, and the server's RSS before the Bundle and at its peak (VmHWM).
# Needs curl, psql and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-1000 10000 40000}")
read -r -a sizes <<<"${sizes[*]}"
admin=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${CARGO_TARGET_DIR:-target}/release/passerelle
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# A transaction Bundle of N entries of one method (PUT-create, POST, PUT-update, DELETE).
bundle() {
  python3 - "$1" "$2" >"$work/bundle.json" <<'PY'
import json, sys
n, method = int(sys.argv[1]), sys.argv[2]
def entry(i):
    pid = f"bm-{i}"
    resource = {"resourceType": "Patient",
                "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": f"{2800000000000 + i}"}],
                "name": [{"family": f"Famille{i}", "given": ["Camille"]}],
                "gender": "female", "birthDate": "1948-03-12",
                "address": [{"city": "Dijon", "postalCode": "21000"}]}
    if method == "POST":
        return {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": resource,
                "request": {"method": "POST", "url": "Patient"}}
    if method.startswith("PUT"):
        resource["id"] = pid
        resource["active"] = method == "PUT-update"
        return {"resource": resource, "request": {"method": "PUT", "url": f"Patient/{pid}"}}
    return {"request": {"method": "DELETE", "url": f"Patient/{pid}"}}
json.dump({"resourceType": "Bundle", "type": "transaction", "entry": [entry(i) for i in range(n)]}, sys.stdout)
PY
}

kb() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$server/status"; }

post() {
  local start end status
  start=$(date +%s.%N)
  status=$(curl -s -o "$work/response.json" -w '%{http_code}' -X POST "http://127.0.0.1:$port/fhir" \
    -H 'Content-Type: application/fhir+json' --data-binary @"$work/bundle.json")
  end=$(date +%s.%N)
  [ "$status" = 200 ] || { echo "HTTP $status: $(head -c 400 "$work/response.json")"; exit 1; }
  awk -v s="$start" -v e="$end" 'BEGIN {printf "%.2f", e - s}'
}

printf '| entries | method | body | time | RSS before | peak RSS |\n|---|---|---|---|---|---|\n'
for n in "${sizes[@]}"; do
  db="bundle_memory_$n"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  port=$((18700 + RANDOM % 1000))
  for method in PUT-create POST PUT-update DELETE; do
    "$bin" serve --listen "127.0.0.1:$port" --max-body-bytes 67108864 \
      --database-url "${admin%/*}/$db" >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
    bundle "$n" "$method"
    before=$(kb VmRSS)
    took=$(post)
    printf '| %s | %s | %s MB | %s s | %s MB | %s MB |\n' "$n" "$method" \
      "$(awk -v b="$(stat -c %s "$work/bundle.json")" 'BEGIN {printf "%.1f", b / 1048576}')" \
      "$took" "$((before / 1024))" "$(($(kb VmHWM) / 1024))"
    kill "$server"; wait "$server" 2>/dev/null || true
  done
  psql -q "$admin" -c "DROP DATABASE $db" >/dev/null
done
