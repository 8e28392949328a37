# Sourced by run.sh and ab.sh: the upstream and the nginx reverse proxy both compare against.
# Needs $work (a scratch directory), $pids (an array the caller kills at exit), $NGINX,
# $UP_PORT and $NGINX_PORT.

nginx_conf() { # name, http-block body
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1/body;
  proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/fastcgi;
  uwsgi_temp_path $work/$1/uwsgi;
  scgi_temp_path $work/$1/scgi;
  keepalive_requests 1000000;
  $2
}
CONF
  "$NGINX" -p "$work/$1" -c "$work/$1/nginx.conf" &
  pids+=($!)
}

start_upstream_and_nginx() {
  # The upstream: a small JSON answer for every path, like Grafana's /api/health.
  nginx_conf upstream "server {
    listen 127.0.0.1:$UP_PORT;
    location / {
      default_type application/json;
      return 200 '{\"database\":\"ok\",\"version\":\"11.3.0\",\"commit\":\"bench\"}';
    }
  }"
  # nginx as a plain reverse proxy with pooled keep-alive connections.
  nginx_conf proxy "upstream grafana { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://grafana;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_buffering off;
    }
  }"
}
