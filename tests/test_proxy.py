"""Behind a reverse proxy, each client keeps its own address, limits and logs.

The end-to-end tests run Debian's real nginx and Caddy (child processes in
temp dirs, each in turn) with deploy/nginx.conf and deploy/Caddyfile, the
configurations docs/deployment.md gives, in front of the real server: HTTPS
(a throwaway certificate for nginx, Caddy's own local CA), both WebSockets,
the OsmAnd port. Clients reach the proxy from different loopback addresses
(127.0.0.3, 127.0.0.4, ...) as different users would; the proxy connects to
the server from 127.0.0.1, the only trusted proxy here. Without the proxy's
binary these tests fail in CI and are skipped elsewhere.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import ConnectionRejected, wrap_client_stream

from tests.conftest import bearer, free_port
from tracker.clientaddr import TrustedProxies
from tracker.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
CADDY_TEMPLATE = ROOT / "deploy" / "Caddyfile"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
SERVER_NAME = "tracker.example.com"
UNKNOWN_SHARE = "/share/AAAAAAAAAAAAAAAAAAAAAA"


# -- the rule, on plain inputs ---------------------------------------------------

LOOPBACK = TrustedProxies(["127.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "forwarded", "client"),
    [
        # Trusted peer: the rightmost entry that is not a trusted proxy.
        ("127.0.0.1", "203.0.113.7", None, "203.0.113.7"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.7", None, "203.0.113.7"),
        ("127.0.0.1", "203.0.113.7, 127.0.0.5", None, "203.0.113.7"),
        ("127.0.0.1", "127.0.0.9, 127.0.0.5", None, "127.0.0.9"),
        ("::1", "2001:db8::7", None, "2001:db8::7"),
        ("::ffff:127.0.0.1", "203.0.113.7", None, "203.0.113.7"),
        # Untrusted peer: headers are ignored.
        ("192.0.2.1", "203.0.113.7", None, "192.0.2.1"),
        ("192.0.2.1", None, "for=203.0.113.7", "192.0.2.1"),
        # Ports and brackets are dropped.
        ("127.0.0.1", "203.0.113.7:5678", None, "203.0.113.7"),
        ("127.0.0.1", "[2001:db8::7]:123", None, "2001:db8::7"),
        ("127.0.0.1", "[::1]:123", None, "::1"),  # every hop trusted: the leftmost
        # Malformed entries end the walk at the trusted hop that reported them.
        ("127.0.0.1", "garbage", None, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7, unknown", None, "127.0.0.1"),
        ("127.0.0.1", "unknown, 203.0.113.7", None, "203.0.113.7"),
        ("127.0.0.1", "203.0.113.7, garbage, 127.0.0.5", None, "127.0.0.5"),
        ("127.0.0.1", "", None, "127.0.0.1"),
        ("127.0.0.1", "[::1", None, "127.0.0.1"),
        ("127.0.0.1", "1" * 5000, None, "127.0.0.1"),
        # RFC 7239 Forwarded, when there is no X-Forwarded-For.
        ("127.0.0.1", None, "for=203.0.113.7;proto=https", "203.0.113.7"),
        ("127.0.0.1", None, 'for=192.0.2.9, For="[2001:db8::7]:4711"', "2001:db8::7"),
        ("127.0.0.1", None, "for=_hidden", "127.0.0.1"),
        ("127.0.0.1", None, "for=unknown", "127.0.0.1"),
        ("127.0.0.1", None, "by=203.0.113.9", "127.0.0.1"),
        ("127.0.0.1", None, 'for="', "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7", "for=198.51.100.1", "203.0.113.7"),
        # No header: the peer.
        ("127.0.0.1", None, None, "127.0.0.1"),
    ],
)
def test_client_address_is_the_rightmost_untrusted_hop(peer, forwarded_for, forwarded, client):
    assert LOOPBACK.client(peer, forwarded_for, forwarded) == client


def test_without_trusted_proxies_every_peer_is_the_client():
    assert TrustedProxies([]).client("127.0.0.1", "203.0.113.7", "for=1.2.3.4") == "127.0.0.1"


@pytest.mark.parametrize("value", ['["10.0.0.0/33"]', '["proxy.local"]', '["10.0.0.1", ""]'])
def test_a_bad_trusted_proxy_stops_the_server_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        load_settings(ROOT / "tracker.toml", environ={"TRACKER_SERVER_TRUSTED_PROXIES": value})


def test_trusted_proxies_default_to_loopback_and_take_a_json_list():
    assert TrustedProxies(Settings().server.trusted_proxies).networks == LOOPBACK.networks
    settings = load_settings(
        environ={"TRACKER_SERVER_TRUSTED_PROXIES": '["10.0.0.0/8", "2001:db8::/32"]'}
    )
    assert settings.server.trusted_proxies == ["10.0.0.0/8", "2001:db8::/32"]


def test_the_documented_configs_are_the_files_in_deploy():
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert "```nginx\n" + NGINX_TEMPLATE.read_text(encoding="utf-8") + "```" in doc
    assert "```caddy\n" + CADDY_TEMPLATE.read_text(encoding="utf-8") + "```" in doc


# -- the real nginx and Caddy in front of the real server ---------------------------


@pytest.fixture
def settings(settings):
    """Only the proxy (on 127.0.0.1) is trusted; small limits so that tests reach them."""
    return settings.replace(
        server={"trusted_proxies": ["127.0.0.1"], "max_connections_per_address": 3},
        ingest={"osmand_port": free_port()},
        sharing={"rate_limit_per_minute": 12, "push_interval_seconds": 0},
    )


@dataclass
class Proxy:
    https: str  # https://127.0.0.1:PORT, serving SERVER_NAME
    http: str  # http://127.0.0.1:PORT (redirects to https)
    osmand: str  # http://127.0.0.1:PORT (the OsmAnd port)
    ssl_context: ssl.SSLContext
    api_prefix: str
    buffers_bodies: bool  # reads a whole request body before passing it on (nginx)

    def client(self, source: str = "127.0.0.1", base: str | None = None) -> httpx.AsyncClient:
        """An HTTP client reaching the proxy from the loopback address `source`."""
        transport = httpx.AsyncHTTPTransport(local_address=source, verify=self.ssl_context)
        return httpx.AsyncClient(
            base_url=base or self.https + self.api_prefix,
            transport=transport,
            timeout=10,
            headers={"Host": SERVER_NAME},  # Caddy routes by name
            event_hooks={"request": [_ask_for_server_name]},
        )

    @asynccontextmanager
    async def websocket(self, path: str, source: str = "127.0.0.1"):
        """A WebSocket (wss) to `api_prefix + path` through the proxy, from `source`."""
        host, port = self.https.removeprefix("https://").split(":")
        tcp = await trio.open_tcp_stream(host, int(port), local_address=source)
        stream = trio.SSLStream(tcp, self.ssl_context, server_hostname=SERVER_NAME)
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, SERVER_NAME, self.api_prefix + path)
            try:
                yield ws
            finally:
                await ws.aclose()


async def _ask_for_server_name(request: httpx.Request) -> None:
    request.extensions["sni_hostname"] = SERVER_NAME  # the URL says 127.0.0.1


def find_binary(name: str) -> str:
    """The proxy's binary; a test without it fails in CI and is skipped elsewhere."""
    found = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(path, os.X_OK)),
        None,
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs Debian's {name}")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return found


def render(template: Path, replacements: dict[str, str]) -> str:
    """A file of deploy/ with its example values replaced."""
    text = template.read_text(encoding="utf-8")
    for example, value in replacements.items():
        assert example in text, f"{template.name} no longer has {example!r}"
        text = text.replace(example, value)
    return text


def write_certificate(directory: Path) -> bytes:
    """A self-signed certificate for SERVER_NAME (fullchain.pem, privkey.pem), as certbot's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    (directory / "fullchain.pem").write_bytes(pem)
    (directory / "privkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem


@asynccontextmanager
async def child_process(argv: list[str], log: Path, ports: list[int], env: dict | None = None):
    """A proxy as a child process, up once it listens on every port; stopped by its PID."""
    with open(log, "ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        with trio.fail_after(20):
            for port in ports:
                while True:
                    assert process.poll() is None, log.read_text()
                    try:
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


NGINX_MAIN_CONF = """\
daemon off;
master_process off;
pid nginx.pid;
error_log error.log info;
events {{ worker_connections 256; }}
http {{
    access_log access.log;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    include {site};
}}
"""


@asynccontextmanager
async def run_nginx(workdir: Path, server, settings):
    """deploy/nginx.conf in front of the one server."""
    port = int(server.url.rsplit(":", 1)[1])
    async with nginx_in_front(
        workdir, [port], [settings.ingest.osmand_port], settings.server.api_prefix
    ) as proxy:
        yield proxy


def upstreams(template_line: str, ports: list[int]) -> str:
    """The template's one `server 127.0.0.1:PORT ...;` line, once per port."""
    indent, rest = re.match(r"(\s*)server 127\.0\.0\.1:\d+ (.*)", template_line).groups()
    return "\n".join(f"{indent}server 127.0.0.1:{port} {rest}" for port in ports)


@asynccontextmanager
async def nginx_in_front(
    workdir: Path, api_ports: list[int], osmand_ports: list[int], api_prefix: str = "/api/v1"
):
    """deploy/nginx.conf (IPv6 listens dropped) in a throwaway nginx.conf of its own, with
    the given tracker processes in its upstream blocks."""
    nginx = find_binary("nginx")
    (workdir / "temp").mkdir(parents=True)
    (workdir / "webroot").mkdir()
    ca = write_certificate(workdir)
    https_port, http_port, osmand_port = free_port(), free_port(), free_port()
    lines = NGINX_TEMPLATE.read_text(encoding="utf-8").splitlines()
    api_line = next(line for line in lines if "server 127.0.0.1:8080 " in line)
    osmand_line = next(line for line in lines if "server 127.0.0.1:5056 " in line)
    site = render(
        NGINX_TEMPLATE,
        {
            api_line: upstreams(api_line, api_ports),
            osmand_line: upstreams(osmand_line, osmand_ports),
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "listen 5055;": f"listen 127.0.0.1:{osmand_port};",
            f"/etc/letsencrypt/live/{SERVER_NAME}/": f"{workdir}/",
            "/var/www/html": str(workdir / "webroot"),
        },
    )
    (workdir / "tracker.conf").write_text(re.sub(r"(?m)^\s*listen \[::\]:.*\n", "", site))
    (workdir / "nginx.conf").write_text(NGINX_MAIN_CONF.format(site=workdir / "tracker.conf"))
    argv = [nginx, "-p", f"{workdir}/", "-c", "nginx.conf", "-e", "error.log"]
    async with child_process(argv, workdir / "error.log", [https_port, http_port, osmand_port]):
        yield Proxy(
            https=f"https://127.0.0.1:{https_port}",
            http=f"http://127.0.0.1:{http_port}",
            osmand=f"http://127.0.0.1:{osmand_port}",
            ssl_context=ssl.create_default_context(cadata=ca.decode()),
            api_prefix=api_prefix,
            buffers_bodies=True,
        )


CADDY_GLOBAL_OPTIONS = """\
{{
\tadmin off
\tlocal_certs
\tskip_install_trust
\thttp_port {http_port}
\thttps_port {https_port}
\tstorage file_system {storage}
}}

"""


@asynccontextmanager
async def run_caddy(workdir: Path, server, settings):
    """deploy/Caddyfile on loopback ports, certificates from Caddy's own local CA."""
    caddy = find_binary("caddy")
    workdir.mkdir(parents=True)
    https_port, http_port, osmand_port = free_port(), free_port(), free_port()
    site = render(
        CADDY_TEMPLATE,
        {
            f"{SERVER_NAME} {{": f"{SERVER_NAME} {{\n\tbind 127.0.0.1",
            "http://:5055 {": f"http://:{osmand_port} {{\n\tbind 127.0.0.1",
            "reverse_proxy 127.0.0.1:8080": f"reverse_proxy {server.url.removeprefix('http://')}",
            "reverse_proxy 127.0.0.1:5056": (
                f"reverse_proxy 127.0.0.1:{settings.ingest.osmand_port}"
            ),
        },
    )
    options = CADDY_GLOBAL_OPTIONS.format(
        http_port=http_port, https_port=https_port, storage=workdir / "data"
    )
    (workdir / "Caddyfile").write_text(options + site)
    argv = [caddy, "run", "--config", str(workdir / "Caddyfile"), "--adapter", "caddyfile"]
    env = {**os.environ, "HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "xdg")}
    env["XDG_CONFIG_HOME"] = str(workdir / "xdg")
    ports = [https_port, http_port, osmand_port]
    async with child_process(argv, workdir / "caddy.log", ports, env):
        root = workdir / "data" / "pki" / "authorities" / "local" / "root.crt"
        proxy = None
        with trio.fail_after(20):  # the local CA issues the site's certificate at start
            while proxy is None:
                if root.exists():
                    proxy = Proxy(
                        https=f"https://127.0.0.1:{https_port}",
                        http=f"http://127.0.0.1:{http_port}",
                        osmand=f"http://127.0.0.1:{osmand_port}",
                        ssl_context=ssl.create_default_context(cadata=root.read_text()),
                        api_prefix=settings.server.api_prefix,
                        buffers_bodies=False,
                    )
                    try:
                        async with proxy.client() as client:
                            (await client.get("/health")).raise_for_status()
                    except httpx.HTTPError:
                        proxy = None
                await trio.sleep(0.1)
        yield proxy


@pytest.fixture(params=["nginx", "caddy"])
async def proxy(request, server, settings, tmp_path):
    run = {"nginx": run_nginx, "caddy": run_caddy}[request.param]
    async with run(tmp_path / request.param, server, settings) as running:
        yield running


async def create_share(http, tenant) -> str:
    body = {"device_token": tenant.device_token, "instance_id": tenant.instance_id}
    response = await http.post("/sharing/sessions", json=body, headers=bearer(tenant.admin_token))
    assert response.status_code == 201, response.text
    return response.json()["share_token"]


async def post_position(client: httpx.AsyncClient, tenant, latitude: float) -> None:
    response = await client.post(
        f"/devices/{tenant.device_token}/positions",
        json={"latitude": latitude, "longitude": -0.12, "timestamp": time.time()},
        headers={"X-Ingest-Key": tenant.ingest_key},
    )
    assert response.status_code in (200, 201), response.text


async def receive(ws, timeout: float = 5) -> dict:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def test_rest_works_over_https_through_the_proxy(proxy, fleet):
    async with proxy.client() as client:
        assert (await client.get("/health")).status_code == 200
        await post_position(client, fleet.a, 51.5)
        position = await client.get(
            f"/devices/{fleet.a.device_token}/position", headers=bearer(fleet.a.read_token)
        )
        assert position.status_code == 200 and position.json()["latitude"] == 51.5
        if proxy.buffers_bodies:  # Caddy streams: tracker's early 413 may reach it as a reset
            too_big = await client.post(
                f"/devices/{fleet.a.device_token}/positions",
                content=b'{"positions": [' + b" " * (1024 * 1024 + 10) + b"]}",
                headers={"X-Ingest-Key": fleet.a.ingest_key, "Content-Type": "application/json"},
            )
            assert (
                too_big.status_code == 413
                and too_big.json()["error"]["code"] == "payload_too_large"
            )
    async with proxy.client(base=proxy.http) as plain:
        redirect = await plain.get("/api/v1/health")
        assert redirect.status_code in (301, 308)
        assert redirect.headers["Location"].startswith("https://")


async def test_phone_app_posts_to_the_osmand_port_through_the_proxy(proxy, fleet, http, caplog):
    caplog.set_level(logging.WARNING, logger="tracker")
    async with proxy.client("127.0.0.3", base=proxy.osmand) as phone:
        answer = await phone.get(
            "/", params={"id": fleet.a.ingest_key, "lat": 48.85, "lon": 2.35, "timestamp": 0}
        )
        assert answer.status_code == 200, answer.text
        unknown = await phone.get("/", params={"id": "not-a-key", "lat": 1, "lon": 1})
        assert unknown.status_code == 404
    assert "refused OsmAnd ingest from 127.0.0.3" in caplog.text
    position = await http.get(
        f"/devices/{fleet.a.device_token}/position", headers=bearer(fleet.a.read_token)
    )
    assert position.json()["latitude"] == 48.85


async def test_dispatcher_follows_the_fleet_live_through_the_proxy(proxy, fleet):
    async with proxy.websocket("/ws/realtime") as ws, proxy.client() as client:
        await ws.send_message(
            json.dumps(
                {
                    "type": "authenticate",
                    "jwt": fleet.a.read_token,
                    "instance_id": fleet.a.instance_id,
                }
            )
        )
        assert (await receive(ws))["type"] == "welcome"
        await post_position(client, fleet.a, 51.51)
        update = await receive(ws)
        assert update["type"] == "position" and update["DeviceToken"] == fleet.a.device_token
        assert update["Lat"] == 51.51


async def test_recipient_follows_a_share_live_through_the_proxy(proxy, fleet, http, tracker):
    token = await create_share(http, fleet.a)
    await post_position(http, fleet.a, 51.50)
    async with proxy.websocket(f"/share/{token}/live") as ws:
        assert (await receive(ws))["latitude"] == 51.50
        await ws.send_message(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}
        await post_position(http, fleet.a, 51.52)
        assert (await receive(ws))["latitude"] == 51.52


async def test_two_clients_behind_the_proxy_have_their_own_share_rate_limits(proxy):
    # 12 tokens a minute, a failed lookup costs 6: the third guess is refused.
    async with proxy.client("127.0.0.3") as first, proxy.client("127.0.0.4") as second:
        guesses = [(await first.get(UNKNOWN_SHARE)).status_code for _ in range(3)]
        assert guesses == [404, 404, 429]
        assert (await second.get(UNKNOWN_SHARE)).status_code == 404


async def test_two_clients_behind_the_proxy_have_their_own_connection_caps(proxy, fleet, http):
    token = await create_share(http, fleet.a)
    await post_position(http, fleet.a, 51.50)
    async with (
        proxy.websocket(f"/share/{token}/live", "127.0.0.3"),
        proxy.websocket(f"/share/{token}/live", "127.0.0.3"),
        proxy.websocket(f"/share/{token}/live", "127.0.0.3"),
    ):
        refused = []
        try:
            async with proxy.websocket(f"/share/{token}/live", "127.0.0.3"):
                pass
        except* ConnectionRejected as rejected:  # raised in the connection's reader task
            refused = [error.status_code for error in rejected.exceptions]
        assert refused == [429]
        async with proxy.websocket(f"/share/{token}/live", "127.0.0.4") as other:
            assert (await receive(other))["latitude"] == 51.50


async def test_a_forged_x_forwarded_for_changes_nothing(proxy, server):
    forged = [{"X-Forwarded-For": f"203.0.113.{n}"} for n in range(3)]
    # Through the proxy: it appends (nginx) or sets (Caddy) the real address, the one used.
    async with proxy.client("127.0.0.5") as client:
        guesses = [(await client.get(UNKNOWN_SHARE, headers=h)).status_code for h in forged]
        assert guesses == [404, 404, 429]
    # Straight to the server from an untrusted address: the header is ignored.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.6")
    async with httpx.AsyncClient(base_url=server.api, transport=transport) as client:
        guesses = [(await client.get(UNKNOWN_SHARE, headers=h)).status_code for h in forged]
        assert guesses == [404, 404, 429]


async def test_logs_name_the_client_behind_the_proxy(proxy, fleet, caplog):
    caplog.set_level(logging.WARNING, logger="tracker")
    async with proxy.client("127.0.0.3") as client:
        refused = await client.post(
            f"/devices/{fleet.a.device_token}/positions",
            json={"latitude": 51.5, "longitude": -0.12},
            headers={"X-Ingest-Key": "wrong"},
        )
    assert refused.status_code == 401
    assert "refused native ingest from 127.0.0.3" in caplog.text
