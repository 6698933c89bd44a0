# Sourced by the transfer benchmarks: the CDN (nginx) and the Hub imitation in front of it, both
# on 127.0.0.1, under $WORK. The caller's EXIT trap should call stop_servers.

NGINX_PID=""
HUB_PID=""

stop_servers() {
  if [ -n "$HUB_PID" ]; then kill "$HUB_PID" 2>/dev/null || true; fi
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; fi
}

# start_cdn HTTP_DIRECTIVES: nginx serving $WORK/src, with extra directives in its http block;
# sets NGINX (its URL) and NGINX_PID. nginx cannot listen on port 0 and say which port it got,
# so python picks one.
start_cdn() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
  cat >"$WORK/nginx/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
daemon off; worker_processes 2; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log;
events { worker_connections 1024; }
http { $1 sendfile on; keepalive_requests 100000;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
  server { listen 127.0.0.1:$port; root $WORK/src; } }
CONF
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
  NGINX_PID=$!
  NGINX=http://127.0.0.1:$port
}

# start_hub REPOS_JSON: mc-fake-hub ($HUB_BIN) with these repos (a JSON array), redirecting LFS
# files to the CDN as the real Hub does; sets HUB (its URL) and HUB_PID.
start_hub() {
  cat >"$WORK/hub.json" <<JSON
{"repos": $1, "tree_page_size": 1000,
 "external_cdn": {"url": "$NGINX", "root": "$WORK/src"}, "keep_alive": true}
JSON
  "$HUB_BIN" --config "$WORK/hub.json" >"$WORK/hub.out" 2>"$WORK/hub.err" &
  HUB_PID=$!
  for _ in $(seq 1 600); do grep -q '^hub=' "$WORK/hub.out" 2>/dev/null && break; sleep 0.1; done
  HUB=$(sed -n 's/^hub=\([^ ]*\) .*/\1/p' "$WORK/hub.out")
  [ -n "$HUB" ] || { echo "mc-fake-hub did not start" >&2; cat "$WORK/hub.err" >&2; exit 1; }
}
