# Sourced by scripts/test-package.sh and scripts/test-container.sh: the local hub on the host and
# a config for an aligwd that reaches it over loopback from inside a buildah chroot (which
# shares the host's network). Expects ROOT (the checkout), BDIR (a build tree) and W (a temp dir).

# hub_start N: N devices in $W/devices.csv, the hub in $W/hub; sets MQTTS, HUB_CA, CUSER, CPASS.
hub_start() {
  local n=$1
  tests/hub/aligw-hub gen-devices --count "$n" --product a1OpsTest01 --prefix ops >"$W/devices.csv"
  ALIGW_HUB_PLUGIN="$HUB_PLUGIN" tests/hub/aligw-hub start --devices "$W/devices.csv" \
    --dir "$W/hub" >/dev/null
  read -r MQTTS HUB_CA CUSER CPASS < <(python3 -c '
import json, sys
h = json.load(open(sys.argv[1]))
print(h["mqtts_port"], h["ca_file"], h["cloud_username"], h["cloud_password"])' "$W/hub/hub.json")
}

hub_stop() {
  ALIGW_HUB_PLUGIN="$HUB_PLUGIN" tests/hub/aligw-hub stop --dir "$W/hub" >/dev/null 2>&1 || true
}

# write_config DIR FIRST LAST: DIR/aligw.json for devices FIRST..LAST (1-based rows of
# devices.csv) with the default state and runtime dirs, DIR/devices.csv, DIR/hub-ca.pem; the
# simulator plugin (out of process) posts properties for device FIRST every second.
write_config() {
  local dir=$1 first=$2 last=$3
  mkdir -p "$dir"
  cp "$HUB_CA" "$dir/hub-ca.pem"
  python3 - "$W/devices.csv" "$dir" "$first" "$last" "$MQTTS" <<'PY'
import csv, json, os, sys
src, d, first, last, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = list(csv.DictReader(open(src)))
with open(os.path.join(d, "devices.csv"), "w") as f:
    w = csv.DictWriter(f, fieldnames=["product_key", "device_name", "device_secret"],
                       extrasaction="ignore")
    w.writeheader()
    for r in rows[first - 1:last]:
        w.writerow(r)
cfg = {
    "log_level": "info",
    "cloud": {"host": "127.0.0.1", "port": port, "tls": True, "ca_file": "hub-ca.pem"},
    "devices_file": "devices.csv",
    "health": {"min_online": 1.0},
    # The first device is driven by the simulator in its own aligw-plugin-host (the default
    # isolation), so the installed plugin host and plugin directory are exercised too.
    "plugins": [{"name": "simulator", "config": {"interval_ms": 1000},
                 "devices": [rows[first - 1]["product_key"] + "/" + rows[first - 1]["device_name"]]}],
}
with open(os.path.join(d, "aligw.json"), "w") as f:
    json.dump(cfg, f, indent=2)
PY
}

# device_json ROW: the JSON of row ROW of devices.csv, for aligwctl add --json.
device_json() {
  python3 - "$W/devices.csv" "$1" <<'PY'
import csv, json, sys
r = list(csv.DictReader(open(sys.argv[1])))[int(sys.argv[2]) - 1]
print(json.dumps({"product_key": r["product_key"], "device_name": r["device_name"],
                  "device_secret": r["device_secret"]}))
PY
}

# device_key ROW: "pk/dn" of row ROW.
device_key() {
  python3 -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1])))[int(sys.argv[2])-1]; print(r["product_key"]+"/"+r["device_name"])' "$W/devices.csv" "$1"
}

# wait_online SOCKET N [SECONDS]: until aligwctl status says N devices online.
wait_online() {
  local sock=$1 n=$2 t=${3:-30} online=""
  for _ in $(seq $((t * 4))); do
    online=$("$BDIR/daemon/aligwctl" -s "$sock" --json status 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["online"])' 2>/dev/null || true)
    [ "$online" = "$n" ] && return 0
    sleep 0.25
  done
  echo "FAIL: $n devices online expected on $sock, got '${online}'" >&2
  return 1
}

# hub_subscribe TOPIC OUT: one message of TOPIC at the hub (cloud side) into OUT, in the background
# (SUBPID).
hub_subscribe() {
  timeout 30 mosquitto_sub -h 127.0.0.1 -p "$MQTTS" --cafile "$HUB_CA" -u "$CUSER" -P "$CPASS" \
    -t "$1" -C 1 >"$2" 2>/dev/null &
  SUBPID=$!
  sleep 0.5
}
