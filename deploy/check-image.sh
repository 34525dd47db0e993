#!/usr/bin/env bash
# Checks a built deferd image the way the Deployment will use it:
#
#   deploy/check-image.sh [IMAGE]          (default deferd:0.1.0)
#
# - the image runs as user 10001, with no compiler and no -dev package in it;
# - every shared library the binary links is present;
# - a container started with the default command turns healthy, answers a request with the
#   example config's connect-failed 503 (no app beside it), serves /metrics, and stops cleanly
#   on SIGTERM within the drain time.
#
# The container runs with `--network none`: its own network namespace with only a loopback
# interface, so the example config's 0.0.0.0 listener reaches nothing outside it. Every
# request is made from inside the container.
set -euo pipefail

image="${1:-deferd:0.1.0}"
failures=0

check() {
  local what="$1" expected="$2" actual="$3"
  if [[ "$actual" == "$expected" ]]; then
    echo "ok: $what"
  else
    echo "FAILED: $what: expected '$expected', got '$actual'"
    failures=$((failures + 1))
  fi
}

in_image() {
  docker run --rm --network none --entrypoint bash "$image" -c "$1"
}

check "image user" "10001:10001" "$(docker image inspect -f '{{.Config.User}}' "$image")"
check "process uid" "10001" "$(in_image 'id -u')"
check "compilers" "" "$(in_image 'command -v gcc g++ cc c++ cmake || true')"
check "-dev packages" "0" "$(in_image "dpkg-query -W -f '\${Package}\n' | grep -c -- '-dev\$' || true")"
check "missing libraries" "0" "$(in_image 'ldd /usr/local/bin/deferd | grep -c "not found" || true')"

container="$(docker run -d --network none "$image")"
cleanup() { docker rm -f "$container" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# The HEALTHCHECK probes /healthz every 10 s.
health=""
for _ in $(seq 1 30); do
  health="$(docker inspect -f '{{.State.Health.Status}}' "$container")"
  [[ "$health" == "healthy" ]] && break
  sleep 1
done
check "health" "healthy" "$health"

request='exec 3<>/dev/tcp/127.0.0.1/15006
printf "GET / HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n" >&3
cat <&3'
response="$(docker exec "$container" bash -c "$request" | tr -d '\r')"
check "status without an app" "HTTP/1.1 503 Service Unavailable" "$(head -n 1 <<<"$response")"
check "reason without an app" "deferd-reason: connect-failed" \
  "$(grep -i '^deferd-reason:' <<<"$response" || true)"

scrape='exec 3<>/dev/tcp/127.0.0.1/9901
printf "GET /metrics HTTP/1.0\r\n\r\n" >&3
grep -c "^deferd_requests_total{" <&3 || true'
series="$(docker exec "$container" bash -c "$scrape")"
if [[ "$series" -ge 1 ]]; then
  echo "ok: /metrics has deferd_requests_total ($series series)"
else
  echo "FAILED: /metrics has no deferd_requests_total series"
  failures=$((failures + 1))
fi

docker stop -t 30 "$container" >/dev/null
check "exit code after SIGTERM" "0" "$(docker inspect -f '{{.State.ExitCode}}' "$container")"
check "drain logged" "1" "$(docker logs "$container" 2>&1 | grep -c 'deferd stopped' || true)"

if [[ "$failures" -gt 0 ]]; then
  echo "$failures check(s) failed for $image"
  exit 1
fi
echo "every check passed for $image"
