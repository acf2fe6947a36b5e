"""nginx as the reference proxy: one unprivileged process with its own config in a temp dir."""

from __future__ import annotations

from pathlib import Path

# Tuned as a production reverse proxy would be: keep-alive to the upstream, 64k buffers,
# an access log written to a file (as ours does), no master process so the one PID we measure
# is the one doing the work.
_CONFIG = """
worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/nginx-access.log combined buffer=64k flush=1s;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy_temp;
    fastcgi_temp_path {workdir}/fastcgi_temp;
    uwsgi_temp_path {workdir}/uwsgi_temp;
    scgi_temp_path {workdir}/scgi_temp;
    keepalive_requests 1000000;
    upstream backend {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location /api/proxy/ {{
            proxy_pass http://backend/api/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
            proxy_connect_timeout 1s;
        }}
    }}
}}
"""


def write_config(workdir: Path, port: int, upstream_host_port: str) -> Path:
    """Write nginx.conf for a proxy on `port` in front of `upstream_host_port`; return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "nginx.conf"
    config.write_text(_CONFIG.format(workdir=workdir, port=port, upstream=upstream_host_port))
    return config


def command(config: Path) -> list[str]:
    return ["nginx", "-c", str(config), "-e", str(config.parent / "nginx-error.log")]
