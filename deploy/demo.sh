#!/usr/bin/env bash
# Run deferd in front of an nginx backend, send it real traffic, and print what it saw.
#
#   bash deploy/demo.sh
#
# Run as root on Debian 12: it installs the packages it needs, builds deferd (Release) in
# build-release/, starts nginx on 127.0.0.1:8080 and deferd with config/examples/demo.yaml
# (listeners 127.0.0.1:15006 and :15001, admin 127.0.0.1:9901), sends about 200 requests,
# prints a short report and stops both processes. Everything listens on 127.0.0.1 only.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

backend_port=8080
listener_port=15006
outbound_port=15001
admin_port=9901
config=config/examples/demo.yaml
requests=200

step() { printf '\n==> %s\n' "$*"; }
die() {
  echo "demo: $*" >&2
  exit 1
}

step "Installing dependencies"
bash deploy/install-deps.sh

[[ -f "$config" ]] || die "$config is missing; this checkout has no demo config yet"

step "Building deferd (Release) in build-release/"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B build-release "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DDEFERD_BUILD_TESTS=OFF
cmake --build build-release -j "$(nproc)" --target deferd
deferd=$root/build-release/proxy/deferd

for port in "$backend_port" "$listener_port" "$outbound_port" "$admin_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is already in use; stop whatever listens there and rerun"
  fi
done

workdir=$(mktemp -d /tmp/deferd-demo.XXXXXX)
nginx_pid=
deferd_pid=

# Stops a process by PID: `signal`, then up to 10 s of waiting, then SIGKILL.
stop_pid() {
  local pid=$1 signal=$2
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$deferd_pid" TERM
  stop_pid "$nginx_pid" QUIT
}
trap cleanup EXIT

# Polls `url` until it returns a 2xx status, for at most 10 s.
wait_http() {
  local url=$1 what=$2
  for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  die "$what did not respond to $url within 10 s; logs are in $workdir"
}

step "Starting nginx on 127.0.0.1:$backend_port (prefix $workdir/nginx)"
mkdir -p "$workdir/nginx/www/api" "$workdir/nginx/tmp"
echo '<html><body>served by nginx behind deferd</body></html>' >"$workdir/nginx/www/index.html"
cat >"$workdir/nginx/nginx.conf" <<NGINX
$([[ $(id -u) -eq 0 ]] && echo 'user root root;')
worker_processes 1;
pid $workdir/nginx/nginx.pid;
error_log $workdir/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $workdir/nginx/tmp/client_body;
    proxy_temp_path $workdir/nginx/tmp/proxy;
    fastcgi_temp_path $workdir/nginx/tmp/fastcgi;
    uwsgi_temp_path $workdir/nginx/tmp/uwsgi;
    scgi_temp_path $workdir/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$backend_port;
        root $workdir/nginx/www;
        location = /api/items { default_type application/json; return 200 '{"items":[1,2,3]}\n'; }
        location = /error { return 500; }
    }
}
NGINX
nginx -p "$workdir/nginx" -e "$workdir/nginx/error.log" -c "$workdir/nginx/nginx.conf" \
  -g 'daemon off;' 2>>"$workdir/nginx/stderr.log" &
nginx_pid=$!
wait_http "http://127.0.0.1:$backend_port/" nginx

step "Starting deferd with $config"
"$deferd" --config "$config" >"$workdir/deferd.stdout" 2>"$workdir/deferd.log" &
deferd_pid=$!
wait_http "http://127.0.0.1:$admin_port/ready" deferd

step "Sending $requests requests to 127.0.0.1:$listener_port (at most 60 s)"
base=http://127.0.0.1:$listener_port
statuses=$workdir/statuses
: >"$statuses"
deadline=$((SECONDS + 60))
for i in $(seq "$requests"); do
  if ((SECONDS >= deadline)); then
    echo "demo: stopped after $((i - 1)) requests: the 60 s budget ran out"
    break
  fi
  case $((i % 20)) in
    0) path=/error ;;
    1 | 2) path=/missing ;;
    3 | 4 | 5 | 6) path=/api/items ;;
    *) path=/ ;;
  esac
  curl -s -o /dev/null --max-time 5 -w '%{http_code}\n' "$base$path" >>"$statuses" || true
done
# A few requests with headers a real caller sends.
curl -s -o /dev/null --max-time 5 -w '%{http_code}\n' -H 'x-request-id: demo-request-1' \
  "$base/api/items" >>"$statuses" || true
curl -s -o /dev/null --max-time 5 -w '%{http_code}\n' -H 'X-Forwarded-For: 203.0.113.7' \
  "$base/" >>"$statuses" || true
curl -s -o /dev/null --max-time 5 -w '%{http_code}\n' -H 'Expect: 100-continue' \
  --data-binary 'hello' "$base/api/items" >>"$statuses" || true

step "Burst: 120 parallel requests to /api/items, a third of them urgent"
# /api/ has a fixed limit of two with a queue of four, so most of a burst cannot fit. deferd
# queues the urgent requests first and sheds the least urgent ones with 503 load-shed. The
# urgent ones ask for u=0; the untrusted inbound listener clamps them to its floor, u=1.
burst=$workdir/burst
: >"$burst"
burst_urls=$workdir/burst-urls
: >"$burst_urls"
for i in $(seq 120); do
  if ((i % 3 == 0)); then urgency=0; else urgency=7; fi
  # `next` separates the options of one transfer from the next one's.
  if ((i > 1)); then echo next >>"$burst_urls"; fi
  printf 'url = "%s/api/items?u=%s"\nheader = "deferd-priority: u=%s"\n' \
    "$base" "$urgency" "$urgency" >>"$burst_urls"
  printf 'output = "/dev/null"\nwrite-out = "u=%s %%{http_code}\\n"\n' "$urgency" >>"$burst_urls"
done
curl -s --no-progress-meter --parallel --parallel-max 60 --max-time 10 -K "$burst_urls" >>"$burst" || true
echo "Responses by urgency and status:"
sort "$burst" | uniq -c | sed 's/^/  /'

step "Report"
echo "Responses by status (000: no response):"
sort "$statuses" | uniq -c | sed 's/^/  /'

echo
echo "Metrics excerpt, non-zero samples only (http://127.0.0.1:$admin_port/metrics):"
curl -s --max-time 5 "http://127.0.0.1:$admin_port/metrics" |
  grep -E '^deferd_(requests_total|local_replies_total|upstream_connections_created_total|upstream_failures_total|request_duration_seconds_count|priority_requests_total|backpressure_(limit|decisions_total))' |
  awk '$NF != 0 { print "  " $0 }' | sort || echo "  (no deferd_ samples found)"

# The effective config names the access log file; "-" means deferd's standard output. awk
# reads to the end, so curl never writes into a closed pipe (curl exit 23 under pipefail).
access_log=$(curl -s --max-time 5 "http://127.0.0.1:$admin_port/config" |
  awk '/^access_log:/ { inside = 1; next } inside && /^[^ ]/ { inside = 0 }
       inside && !found && $1 == "path:" { gsub(/"/, "", $2); print $2; found = 1 }')
if [[ -z "$access_log" || "$access_log" == "-" ]]; then
  access_log=$workdir/deferd.stdout
fi

# Stopping deferd flushes the access log, which it otherwise writes in batches.
stop_pid "$deferd_pid" TERM
deferd_pid=

echo
echo "Access log: $access_log"
if [[ -s "$access_log" ]]; then
  tail -n 3 "$access_log" | sed 's/^/  /'
else
  echo "  (empty)"
fi

echo
echo "deferd log: $workdir/deferd.log; nginx logs: $workdir/nginx/"
